"""Builds the objects of a run from its validated configuration.

Models are built on the requested device; ``device="meta"`` builds shapes only (for FLOP counting of
large models without allocating or loading weights).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lazygen.cache.base import CacheConf, CachePolicy
from lazygen.config import LlamaGenModelConf, ModelConf, RunConf, TokenizerConf, WeightsConf
from lazygen.models.mar.mar import MAR
from lazygen.models.pixel import PixelTokenizer
from lazygen.models.synthetic import SyntheticDecoder, SyntheticModel, SyntheticModelConf
from lazygen.registry import component
from lazygen.weights import load_strict, read_state_dict, resolve_weight


def _network(
    factory: Callable[[], nn.Module],
    conf: ModelConf | LlamaGenModelConf,
    weights: WeightsConf | TokenizerConf,
    config_key: str,
    device: torch.device,
    home: Path | None,
    reader: Callable[[Path], dict] = read_state_dict,
) -> nn.Module:
    """Seeded random weights (also for any meta-device build), or a strictly loaded checkpoint."""
    if conf.init == "random" or device.type == "meta":
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(conf.init_seed)
            return factory().eval()
    path = resolve_weight(weights.registry, weights.path, home=home, config_key=config_key)
    with torch.device("meta"):
        network = factory()
    load_strict(network, reader(path), source=str(path), assign=True)
    return network.to(device).eval()


def build_model(
    conf: ModelConf | LlamaGenModelConf, device: str | torch.device = "cpu", home: Path | None = None
) -> nn.Module:
    """The generator network, in eval mode; pretrained weights are loaded strictly."""
    device = torch.device(device)
    if isinstance(conf, SyntheticModelConf):
        return SyntheticModel(conf).to(device).eval()
    if isinstance(conf, LlamaGenModelConf):
        from lazygen.models.llamagen import LlamaGen, read_gpt_checkpoint

        factory = lambda: LlamaGen(conf.arch)  # noqa: E731
        return _network(factory, conf, conf.weights, "model.weights.path", device, home, read_gpt_checkpoint)
    model = _network(lambda: MAR(conf.arch), conf, conf.weights, "model.weights.path", device, home)
    if conf.clip_denoised:  # bounded tokens: the head's x0 estimate is clamped to their range
        tok = conf.tokenizer
        model.diffloss.gen_diffusion.x0_range = (
            PixelTokenizer(tok.latent_scale, tok.latent_shift).token_range
            if tok.kind == "pixel"
            else (-tok.latent_bound, tok.latent_bound)  # KL latents: the bound their manifest records
        )
    return model


def build_tokenizer(
    conf: ModelConf, device: str | torch.device = "cpu", home: Path | None = None
) -> nn.Module:
    """The latent decoder (a KL autoencoder, VQ-16, or a network-free tokenizer), in eval mode."""
    if isinstance(conf, SyntheticModelConf):
        return SyntheticDecoder(conf.image_size).to(device)
    tok = conf.tokenizer
    if tok.kind == "pixel":
        return PixelTokenizer(tok.latent_scale, tok.latent_shift).to(device)
    if tok.kind == "levels":
        from lazygen.models.levels import LevelTokenizer

        return LevelTokenizer(tok.levels).to(device)
    if tok.kind == "vq16":
        from lazygen.models.llamagen.vq import VQModel, VQTokenizer, read_vq_checkpoint

        vq = _network(
            VQModel, conf, tok, "model.tokenizer.path", torch.device(device), home, read_vq_checkpoint
        )
        return VQTokenizer(vq, conf.eval_size)
    from lazygen.models.vae.kl import AutoencoderKL, KLArch

    arch = tok.arch if tok.kind == "kl" else KLArch()  # kl16 is always the official shape
    return _network(
        lambda: AutoencoderKL.from_arch(arch, latent_scale=tok.latent_scale),
        conf,
        tok,
        "model.tokenizer.path",
        torch.device(device),
        home,
    )


def build_sampler(conf: Any) -> Any:
    """The sampler registered under ``conf.name``, built from its validated schema."""
    return component("sampler", conf.name).build(conf)


def build_policy(conf: Any) -> CachePolicy:
    """The cache policy registered under ``conf.name``, built from its validated schema."""
    return component("cache", conf.name).build(conf)


def baseline_sampler_conf(run: RunConf) -> Any:
    """The model's own sampler at its default steps, with the run's guidance, temperature and RNG."""
    return run.sampler.baseline(run.model.default_num_iter)


def is_accelerated(run: RunConf) -> bool:
    """Whether the run differs from its baseline (another policy, sampler or step count)."""
    return run.cache != CacheConf() or run.sampler != baseline_sampler_conf(run)
