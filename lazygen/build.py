"""Builds the objects of a run from its validated configuration.

Models are built on the requested device; ``device="meta"`` builds shapes only (for FLOP counting of
large models without allocating or loading weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lazygen.cache.base import CachePolicy
from lazygen.config import CacheConf, ModelConf, RunConf, SamplerConf
from lazygen.errors import ConfigError
from lazygen.models.mar.mar import MAR
from lazygen.models.pixel import PixelTokenizer
from lazygen.samplers.mar import MARSampler, MARSamplerConf
from lazygen.weights import load_strict, read_state_dict, resolve_weight


def _weights_path(registry: str | None, path: str | None, home: Path | None, key: str) -> Path:
    return resolve_weight(registry, path, home=home, config_key=key)


def build_model(conf: ModelConf, device: str | torch.device = "cpu", home: Path | None = None) -> MAR:
    """The generator network, in eval mode; pretrained weights are loaded strictly."""
    if conf.family != "mar":
        raise ConfigError(f"model.family={conf.family!r} has no builder yet; use a MAR model (mar_b/l/h).")
    device = torch.device(device)
    if conf.init == "random" or device.type == "meta":
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(conf.init_seed)
            return MAR(conf.arch).eval()
    path = _weights_path(conf.weights.registry, conf.weights.path, home, "model.weights.path")
    with torch.device("meta"):
        model = MAR(conf.arch)
    load_strict(model, read_state_dict(path), source=str(path), assign=True)
    return model.to(device).eval()


def build_tokenizer(
    conf: ModelConf, device: str | torch.device = "cpu", home: Path | None = None
) -> nn.Module:
    """The latent decoder (KL-16 VAE or the pixel tokenizer), in eval mode."""
    tok = conf.tokenizer
    if tok.kind == "pixel":
        return PixelTokenizer(tok.latent_scale).to(device)
    from lazygen.models.vae.kl import AutoencoderKL

    device = torch.device(device)
    if conf.init == "random" or device.type == "meta":
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(conf.init_seed)
            return AutoencoderKL.kl16(latent_scale=tok.latent_scale).eval()
    path = _weights_path(tok.registry, tok.path, home, "model.tokenizer.path")
    with torch.device("meta"):
        vae = AutoencoderKL.kl16(latent_scale=tok.latent_scale)
    load_strict(vae, read_state_dict(path), source=str(path), assign=True)
    return vae.to(device).eval()


def build_sampler(conf: SamplerConf) -> MARSampler:
    return MARSampler(
        MARSamplerConf(
            num_iter=conf.num_iter,
            cfg=conf.cfg,
            cfg_schedule=conf.cfg_schedule,
            temperature=conf.temperature,
            diffusion_steps=conf.diffusion_steps,
            rng=conf.rng,
        )
    )


def build_policy(conf: CacheConf) -> CachePolicy:
    if conf.name == "none":
        return CachePolicy()
    raise ConfigError(f"cache={conf.name!r} is not implemented; available: none.")


def baseline_sampler_conf(run: RunConf) -> SamplerConf:
    """The model's own sampler at its default steps, with the run's guidance, temperature and RNG."""
    s = run.sampler
    return SamplerConf(
        name="mar",
        num_iter=run.model.default_num_iter,
        cfg=s.cfg,
        cfg_schedule=s.cfg_schedule,
        temperature=s.temperature,
        diffusion_steps=None,
        rng=s.rng,
    )


def is_accelerated(run: RunConf) -> bool:
    """Whether the run differs from its baseline (another policy, sampler or step count)."""
    return run.cache.name != "none" or run.sampler != baseline_sampler_conf(run)
