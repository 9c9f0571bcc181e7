"""``python -m lazygen.train``: train the tiny models lazygen ships, with Lightning ``fit``.

``recipe=mar`` (default) trains a MAR (``model=tiny_mar``) on ``data=digits16``; ``recipe=llamagen`` trains a
LlamaGen (``model=tiny_llamagen``) on the digits as raster sequences of intensity-level tokens;
``recipe=evaluator`` trains the digits16 classifier that measures FID/IS/class accuracy and writes the reference statistics
of the real training digits. Each run exports the EMA weights as safetensors plus a manifest (sha256, the
exact command, the commit, the final loss) into ``export_dir``; ``export_dir=lazygen/assets`` replaces
the shipped files. An interrupted run resumes from ``<run dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from lazygen.cli import CONFIG_PATH, exit_with_user_error
from lazygen.config import MODEL_SCHEMAS, HardwareConf, LlamaGenModelConf, ModelConf, typed_group
from lazygen.data.digits16 import DatasetConf, load_digits16, to_uint8_rgb
from lazygen.errors import ConfigError, LazygenError
from lazygen.lit.training import (
    ARFitModule,
    AutoencoderFitModule,
    ClassifierFitModule,
    MARFitModule,
    RecipeConf,
)
from lazygen.weights import sha256_of

RECIPES = ("mar", "llamagen", "evaluator", "tokenizer")
# the model recipes: the family of the model group each reads, the tokenizer kinds it accepts, the shipped
# model group; recipe=tokenizer trains the KL autoencoder of a MAR model group (its tokenizer, not the MAR)
GENERATORS = {
    "mar": ("mar", ("pixel", "kl"), "tiny_mar"),
    "llamagen": ("llamagen", ("levels",), "tiny_llamagen"),
    "tokenizer": ("mar", ("kl",), "tiny_mar"),
}
LOSS_WINDOW = 100  # the reported final loss is the mean over the last steps
EVALUATOR_NAME = "digits16_evaluator"
REFERENCE_STATS_NAME = "digits16_reference_stats.npz"
EVAL_BATCH = 256
PIXEL_RANGE = 2.0  # images live in [-1, 1]


def git_commit() -> str:
    """The commit of the lazygen checkout this runs from (with ``-dirty`` if it has local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _validate(recipe: RecipeConf, data: DatasetConf) -> None:
    if recipe.target not in RECIPES:
        raise ConfigError(f"recipe.target={recipe.target!r} is not one of {', '.join(RECIPES)}.")
    if recipe.max_steps < 1 or recipe.batch_size < 1:
        raise ConfigError(
            f"recipe.max_steps={recipe.max_steps} and recipe.batch_size={recipe.batch_size} must be at least 1."
        )
    if recipe.posterior not in ("sample", "mean"):
        raise ConfigError(f"recipe.posterior={recipe.posterior!r} must be sample (MAR's official) or mean.")
    if recipe.posterior_noise < 0:
        raise ConfigError(
            f"recipe.posterior_noise={recipe.posterior_noise} must be at least 0 (1 is the official posterior; "
            "0 trains on the means, as recipe.posterior=mean does)."
        )
    if recipe.lr_schedule not in ("cosine", "constant"):
        raise ConfigError(f"recipe.lr_schedule={recipe.lr_schedule!r} must be cosine or constant.")
    if not 0.0 <= recipe.mask_ratio_min <= 1.0:
        raise ConfigError(f"recipe.mask_ratio_min={recipe.mask_ratio_min} must lie in [0, 1] (MAR uses 0.7).")


def _loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    if batch_size > len(images):
        raise ConfigError(
            f"recipe.batch_size={batch_size} is larger than the {len(images)} training images; lower it."
        )
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                      generator=gen)  # fmt: skip


def _module(cfg: DictConfig, recipe: RecipeConf, seed: int) -> tuple[L.LightningModule, str]:
    if recipe.target == "evaluator":
        from lazygen.metrics.digits_classifier import DigitsClassifier

        torch.manual_seed(seed)
        return ClassifierFitModule(DigitsClassifier(), recipe, seed), EVALUATOR_NAME
    from lazygen.build import build_model, build_tokenizer
    from lazygen.models.mar.mar import MAR

    model_conf = _generator_conf(cfg, recipe)
    if recipe.target == "tokenizer":
        from lazygen.models.vae.kl import AutoencoderKL

        tok = model_conf.tokenizer
        torch.manual_seed(model_conf.init_seed)
        return AutoencoderFitModule(AutoencoderKL.from_arch(tok.arch), recipe, seed), str(tok.registry)
    tokenizer = build_tokenizer(model_conf)
    if isinstance(model_conf, LlamaGenModelConf):
        # seeded by model.init_seed; build_model hands back eval mode, which Lightning leaves as it is
        model = build_model(dataclasses.replace(model_conf, init="random")).train()
        return ARFitModule(model, tokenizer, recipe, seed), model_conf.name
    torch.manual_seed(model_conf.init_seed)
    model = MAR(model_conf.arch)
    return MARFitModule(model, tokenizer, recipe, seed), model_conf.name


def _generator_conf(cfg: DictConfig, recipe: RecipeConf) -> ModelConf | LlamaGenModelConf:
    """The model group, checked against the recipe: each generator recipe trains one family on one tokenizer."""
    family, tokenizer, shipped = GENERATORS[recipe.target]
    name, got = cfg.model.get("name", "?"), str(cfg.model.get("family", "mar"))
    if got != family:
        hint = next(
            (f" or recipe={r} to train this {got} model" for r, g in GENERATORS.items() if g[0] == got), ""
        )
        raise ConfigError(
            f"recipe={recipe.target} trains a {family} model, but model={name} is a {got} model; pass "
            f"model={shipped}{hint}."
        )
    model_conf = typed_group("model", MODEL_SCHEMAS[family], cfg.model)
    if model_conf.tokenizer.kind not in tokenizer:
        raise ConfigError(
            f"model={name} decodes with a {model_conf.tokenizer.kind} tokenizer; recipe={recipe.target} trains "
            f"on {' or '.join(tokenizer)} tokens of digits16 (model={shipped})."
        )
    if isinstance(model_conf, LlamaGenModelConf):
        arch, levels, side = model_conf.arch, model_conf.tokenizer.levels, int(cfg.data.image_size)
        if arch.vocab_size != levels or arch.block_size != side * side:
            raise ConfigError(
                f"model={name} has vocab_size={arch.vocab_size} and block_size={arch.block_size}, but the "
                f"{levels}-level tokenizer on {side}x{side} images gives {levels} token ids and {side * side} "
                "tokens per image; make them agree."
            )
        if recipe.label_drop_prob > 0 and arch.class_dropout_prob <= 0:
            raise ConfigError(
                f"recipe.label_drop_prob={recipe.label_drop_prob} needs the null class, but model={name} has "
                "model.arch.class_dropout_prob=0 (no null-class row); set it to 0.1 or the label drop to 0."
            )
    return model_conf


def _evaluator_extras(module: ClassifierFitModule, data: DatasetConf, export_dir: Path) -> dict[str, Any]:
    """Held-out accuracy of the EMA classifier, and the reference statistics of the training digits."""
    from lazygen.metrics.quality import compute_stats, save_reference_stats

    net = module.net.eval()
    net.load_state_dict(module.ema.state_dict())
    out: dict[str, Any] = {}
    for split in ("train", "heldout"):
        images, labels = load_digits16(data, split)
        feats, logits = [], []
        with torch.no_grad():
            for i in range(0, len(images), EVAL_BATCH):
                f, lg = net(to_uint8_rgb(images[i : i + EVAL_BATCH]))
                feats.append(f)
                logits.append(lg)
        acc = float((torch.cat(logits).argmax(1) == labels).float().mean())
        out[f"{split}_accuracy"] = acc
        if split == "train":
            mu, sigma = compute_stats(torch.cat(feats))
            save_reference_stats(export_dir / REFERENCE_STATS_NAME, mu, sigma)
            out["reference_stats"] = {"file": REFERENCE_STATS_NAME, "images": len(images), "split": "train",
                                      "sha256": sha256_of(export_dir / REFERENCE_STATS_NAME)}  # fmt: skip
    return out


def _tokenizer_extras(module: AutoencoderFitModule, data: DatasetConf) -> dict[str, Any]:
    """What MAR needs to know of the trained autoencoder: the scale that gives the posterior means of the
    training digits unit variance (``model.tokenizer.latent_scale``; ``recipe.posterior=mean`` trains MAR on
    those means), the largest scaled mean (``model.tokenizer.latent_bound``), the posterior noise, and how
    well it reconstructs the held-out digits."""
    net = module.net.eval()
    net.load_state_dict(module.ema.state_dict())
    with torch.no_grad():
        train, _ = load_digits16(data, "train")
        posteriors = [net.encode(train[i : i + EVAL_BATCH]) for i in range(0, len(train), EVAL_BATCH)]
        means = torch.cat([p.mean for p in posteriors])
        noise = torch.cat([p.std for p in posteriors])
        heldout, _ = load_digits16(data, "heldout")
        recon = net.decode(net.encode(heldout).mode()).clamp(-1, 1)
        mse = float((recon - heldout).square().mean())
    std = float(means.std())
    return {
        "latent_std": std,
        "latent_mean": float(means.mean()),
        "latent_abs_max": float((means / std).abs().max()),  # of the scaled tokens MAR sees
        "posterior_std": float(noise.mean()),  # the KL noise, against latent_std
        "suggested_latent_scale": round(1.0 / std, 4),
        "heldout_psnr_db": round(10 * math.log10(PIXEL_RANGE**2 / mse), 2),
    }


def train_job(cfg: DictConfig, run_dir: str | Path, command: str) -> dict[str, Any]:
    """Fit one recipe, export the EMA weights and the manifest; returns the manifest."""
    recipe: RecipeConf = typed_group("recipe", RecipeConf, cfg.recipe)
    data: DatasetConf = typed_group("data", DatasetConf, cfg.data)
    hw: HardwareConf = typed_group("hardware", HardwareConf, cfg.hardware)
    _validate(recipe, data)
    commit = git_commit()  # now, before the long fit: the code that trains is the code at start
    run_dir = Path(run_dir)
    threads = recipe.num_threads or hw.num_threads
    if threads:
        torch.set_num_threads(threads)
    seed = int(cfg.seed)
    images, labels = load_digits16(data, "train")
    module, name = _module(cfg, recipe, seed)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    trainer = L.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, strategy=hw.strategy, precision=hw.precision,
        max_steps=recipe.max_steps, max_epochs=-1, gradient_clip_val=recipe.grad_clip or None,
        logger=CSVLogger(str(run_dir), name="", version=""), log_every_n_steps=recipe.log_every,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=recipe.checkpoint_every,
                                   save_top_k=0)],
        enable_model_summary=False, default_root_dir=str(run_dir),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, _loader(images, labels, recipe.batch_size, seed),
                ckpt_path=str(last) if last.is_file() else None)  # fmt: skip
    seconds = time.perf_counter() - start

    export_dir = Path(str(cfg.export_dir)) if cfg.get("export_dir") else run_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    weights = export_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.ema.state_dict().items()}, str(weights))
    (run_dir / "losses.json").write_text(json.dumps(module.losses))
    recent = module.losses[-LOSS_WINDOW:]
    manifest: dict[str, Any] = {
        "name": name,
        "file": weights.name,
        "sha256": sha256_of(weights),
        "bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in module.net.parameters()),
        "command": command,
        "commit": commit,
        "steps": int(trainer.global_step),
        "train_seconds_this_attempt": round(seconds, 1),
        "final_loss": sum(recent) / len(recent) if recent else None,
        "first_loss": module.losses[0] if module.losses else None,
        "weights": "EMA",
        "recipe": OmegaConf.to_container(cfg.recipe, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "torch": torch.__version__,
    }
    if recipe.target == "evaluator":
        manifest.update(_evaluator_extras(module, data, export_dir))
    if recipe.target == "tokenizer":
        manifest.update(_tokenizer_extras(module, data))
    (export_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    command = " ".join(["python -m lazygen.train", *HydraConfig.get().overrides.task])
    try:
        manifest = train_job(cfg, run_dir, command)
    except LazygenError as exc:
        exit_with_user_error(exc)
    Console(stderr=True).print_json(
        json.dumps({k: v for k, v in manifest.items() if k not in ("recipe", "data")})
    )


if __name__ == "__main__":
    main()
