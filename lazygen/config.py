"""Dataclass schemas for every config group, and their validation.

Hydra composes plain YAML; ``validate`` merges each group into its schema (so unknown keys and wrong types
fail), then range-checks values and cross-group compatibility. Every failure is a :class:`ConfigError`
whose message names the key, the bad value and the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lazygen.cache.base import CacheConf
from lazygen.diffusion.gaussian import MIN_SAMPLING_STEPS, TRAIN_TIMESTEPS
from lazygen.errors import ConfigError, require, require_one_of
from lazygen.models.llamagen.gpt import LlamaGenArch
from lazygen.models.mar.mar import MARArch
from lazygen.models.synthetic import SyntheticModelConf
from lazygen.models.vae.kl import KLArch
from lazygen.registry import (
    BASE_OPTION,
    SCHEMA_PREFIX,
    component,
    components,
    load_builtin_components,
    require_family,
    store_defaults,
)
from lazygen.samplers.mar import CFG_SCHEDULES, MARSamplerConf
from lazygen.samplers.rng import RNG_PROTOCOLS

# ``${sum:${.list}}``: a value that is the sum of a list (a step count from per-stage counts), so sweeps vary only the list.
OmegaConf.register_new_resolver("sum", lambda values: sum(values), replace=True)
DIGEST_CHARS = 12
# ``${digest:${hydra.job.override_dirname}}``: a short stable name for a job's settings (search trial dirs)
OmegaConf.register_new_resolver(
    "digest", lambda text: hashlib.sha1(str(text).encode()).hexdigest()[:DIGEST_CHARS], replace=True
)

MODEL_FAMILIES = ("mar", "llamagen", "synthetic")
TOKENIZERS = ("kl16", "kl", "pixel", "vq16", "levels")
FAMILY_TOKENIZERS = {"mar": ("kl16", "kl", "pixel"), "llamagen": ("vq16", "levels"), "synthetic": ()}
LOGGERS = ("wandb", "csv", "none")
PRECISIONS = ("32-true", "bf16-mixed")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune")
WANDB_MODES = ("auto", "online", "offline", "disabled")
FLOP_MODES = ("auto", "meta", "real")
VQ_DOWNSAMPLE = 16  # VQ-16: one token per 16x16 pixels


@dataclass
class WeightsConf:
    registry: str | None = None
    path: str | None = None


@dataclass
class TokenizerConf:
    kind: str = "kl16"
    registry: str | None = "kl16"
    path: str | None = None
    latent_scale: float = 0.2325
    latent_shift: float = 0.0  # pixel tokens: (image - shift) * scale, so tokens have about zero mean
    levels: int = 16  # levels tokens: evenly spaced intensities in [-1, 1]
    # kind=kl: the autoencoder's shape (kl16 is always the official one), and the bound that |latent tokens|
    # of real images stay below (a lazygen-trained autoencoder's manifest records it as latent_abs_max)
    arch: KLArch = field(default_factory=KLArch)
    latent_bound: float | None = None


@dataclass
class EvaluatorConf:
    """How this model's images are judged when metrics.quality.* is ``auto``."""

    extractor: str = "inception"  # inception | digits16 | a dotted path to an nn.Module factory
    reference_stats: str | None = "adm_in256_stats"  # registry name or .npz path; null = no FID


@dataclass
class ModelConf:
    name: str = "mar_b"
    family: str = "mar"
    init: str = "pretrained"
    init_seed: int = 0  # seed of the random initialisation (model.init=random), equal in every process
    arch: MARArch = field(default_factory=MARArch)
    weights: WeightsConf = field(default_factory=WeightsConf)
    tokenizer: TokenizerConf = field(default_factory=TokenizerConf)
    default_cfg: float = 2.9  # MAR-B's (the official README's cfg for mar_base)
    default_num_iter: int = 64
    clip_denoised: bool = (
        False  # clamp the diffusion head's x0 to the tokens' range (pixel or bounded latents)
    )
    evaluator: EvaluatorConf = field(default_factory=EvaluatorConf)

    @property
    def num_classes(self) -> int:
        return self.arch.class_num


@dataclass
class LlamaGenModelConf:
    """``family: llamagen``: a class-conditional LlamaGen GPT and its token decoder."""

    name: str = "llamagen_xl"
    family: str = "llamagen"
    init: str = "pretrained"
    init_seed: int = 0
    image_size: int = 384  # generated resolution
    eval_size: int = 256  # images are resized to this before FID/IS (the official protocol)
    arch: LlamaGenArch = field(default_factory=LlamaGenArch)
    weights: WeightsConf = field(default_factory=WeightsConf)
    tokenizer: TokenizerConf = field(
        default_factory=lambda: TokenizerConf(kind="vq16", registry="vq_ds16_c2i")
    )
    default_cfg: float = 1.75
    default_num_iter: int = 576  # one token per step
    default_top_p: float = 1.0  # sampler.top_p of its ar sampler (1.0: off, the official FID recipe)
    evaluator: EvaluatorConf = field(default_factory=EvaluatorConf)

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes


# The schema of the model group, chosen by its ``family``.
MODEL_SCHEMAS: dict[str, type] = {
    "mar": ModelConf,
    "llamagen": LlamaGenModelConf,
    "synthetic": SyntheticModelConf,
}


@dataclass
class HardwareConf:
    accelerator: str = "cpu"
    devices: Any = 1  # per node
    num_nodes: int = 1  # machines; SLURM and torchrun environments are read by Lightning
    strategy: str = "auto"
    # 32-true: exact fp32. bf16-mixed: the networks' matrix multiplies and attention in bf16 (autocast);
    # the diffusion chain, the sampling maths and the token grid stay fp32
    precision: str = "32-true"
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
    compile: bool = False  # torch.compile the transformer stacks and the diffusion head's step
    compile_mode: str = "auto"  # auto: reduce-overhead (CUDA graphs) on GPU, default (inductor) on CPU


@dataclass
class DataConf:
    num_images: int = 20
    labels: Any = "balanced"  # balanced (the papers' protocol) | random | a list of class ids, cycled
    # the knee of `make bench-throughput` on 2 cores for both tiny models (README, "Throughput"); images do
    # not depend on it
    batch_size: int = 32
    seed: int = 0


@dataclass
class FlopsConf:
    enabled: bool = True
    mode: str = "auto"  # auto | meta (shapes only, exact for static schedules) | real (one real batch)
    num_images: int = 1


@dataclass
class QualityConf:
    enabled: Any = "auto"  # auto: on when the model's evaluator ships with lazygen (tiny models)
    # auto = model.evaluator.extractor | inception (`eval` extra) | digits16 | a dotted path
    extractor: str = "auto"
    # auto = model.evaluator.reference_stats | a registry name | an ADM-style .npz | null (no FID)
    reference_stats: str | None = "auto"
    is_splits: int = 10
    bootstrap: int = 100  # resamples of the generated images behind quality/fid_se and class_acc_se (0: off)


@dataclass
class SpeedupConf:
    enabled: Any = "auto"  # auto: on when the run is accelerated (cache or sampler differ from the baseline)
    num_images: int = 4  # subset of the sample specs generated by both, interleaved per batch


@dataclass
class MetricsConf:
    latency: bool = True
    flops: FlopsConf = field(default_factory=FlopsConf)
    quality: QualityConf = field(default_factory=QualityConf)
    speedup: SpeedupConf = field(default_factory=SpeedupConf)


@dataclass
class LoggerConf:
    kind: str = "wandb"
    project: str = "lazygen"
    mode: str = "auto"
    entity: str | None = None


@dataclass
class CallbacksConf:
    save_png: bool = True
    save_npz: bool = True
    save_latents: bool = True
    progress_bar: bool = True
    grid_max_images: int = 100


@dataclass
class RunConf:
    """The validated, typed view of one run's configuration."""

    model: ModelConf | LlamaGenModelConf
    sampler: Any  # the registered schema of the chosen sampler (lazygen.registry)
    cache: Any  # ... and of the chosen cache policy
    hardware: HardwareConf
    data: DataConf
    metrics: MetricsConf
    logger: LoggerConf
    callbacks: CallbacksConf
    seed: int = 0
    task_name: str = "generate"
    sweep_name: str = "generate"
    tags: list[str] = field(default_factory=list)


GROUPS: dict[str, type] = {
    "model": ModelConf,
    "sampler": MARSamplerConf,
    "cache": CacheConf,
    "hardware": HardwareConf,
    "data": DataConf,
    "metrics": MetricsConf,
    "logger": LoggerConf,
    "callbacks": CallbacksConf,
}


def _typed(group: str, schema: type, node: Any) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        raise ConfigError(
            f"Invalid configuration in group '{group}' at key '{group}.{key}': {exc.msg.splitlines()[0]}. "
            f"Check the spelling and the type of the value (see conf/{group}/ for the available keys)."
        ) from None


def typed_group(group: str, schema: type, node: Any) -> Any:
    """One config group as its dataclass schema (unknown keys and wrong types become a ConfigError)."""
    try:
        container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    except OmegaConfBaseException as exc:
        raise ConfigError(f"The configuration of group '{group}' could not be resolved: {exc.msg}.") from None
    return _typed(group, schema, container)


def _schema(group: str, default: type, node: Any) -> type:
    """The dataclass of a group; the sampler's and the cache's are registered with their component
    (by ``name``), the model's depends on its ``family``."""
    key = "family" if group == "model" else "name"
    if group not in ("model", "sampler", "cache"):
        return default
    fallback = getattr(default(), key)
    name = node.get(key, fallback) if isinstance(node, DictConfig | dict) else fallback
    if group == "model":
        require_one_of("model.family", name, tuple(MODEL_SCHEMAS))
        return MODEL_SCHEMAS[name]
    return component(group, name).schema


def validate(cfg: DictConfig) -> RunConf:
    """Typed, range-checked configuration of a run, or a ConfigError saying what to fix."""
    if "name" in cfg.get("data", {}):
        raise ConfigError(
            f"data={cfg.data.name} is a training dataset (for `python -m lazygen.train`); a generation run's "
            "data group says which samples to generate. Use data=default and set data.num_images, "
            "data.labels or data.batch_size instead."
        )
    family = cfg.model.get("family") if isinstance(cfg.get("model"), DictConfig) else None
    if family in MODEL_FAMILIES:  # before resolving: another family's sampler may name keys this model lacks
        for kind in ("sampler", "cache"):
            name = cfg[kind].get("name") if isinstance(cfg.get(kind), DictConfig) else None
            if isinstance(name, str) and name in components(kind):
                require_family(kind, name, family, str(cfg.model.get("name")))
    try:
        groups = {g: typed_group(g, _schema(g, s, cfg[g]), cfg[g]) for g, s in GROUPS.items()}
        top = {k: cfg.get(k) for k in ("seed", "task_name", "sweep_name")}
        tags = list(cfg.get("tags") or [])
    except OmegaConfBaseException as exc:
        raise ConfigError(f"The configuration could not be resolved: {exc.msg}.") from None
    run = RunConf(**groups, seed=int(top["seed"]), task_name=str(top["task_name"]),
                  sweep_name=str(top["sweep_name"]), tags=[str(t) for t in tags])  # fmt: skip
    _validate_values(run)
    return run


def _validate_values(run: RunConf) -> None:
    m, s, d = run.model, run.sampler, run.data
    require_one_of("model.family", m.family, MODEL_FAMILIES)
    require_one_of("model.init", m.init, ("pretrained", "random"))
    if FAMILY_TOKENIZERS[m.family]:  # the synthetic model has no tokenizer
        require_one_of("model.tokenizer.kind", m.tokenizer.kind, FAMILY_TOKENIZERS[m.family])
    for kind in ("sampler", "cache"):
        require_family(kind, getattr(run, kind).name, m.family, m.name)
    require_one_of("sampler.rng", s.rng, RNG_PROTOCOLS)
    require_one_of("logger.kind", run.logger.kind, LOGGERS)
    require_one_of("hardware.precision", run.hardware.precision, PRECISIONS)
    require_one_of("hardware.compile_mode", run.hardware.compile_mode, COMPILE_MODES)
    require_one_of("logger.mode", run.logger.mode, WANDB_MODES)
    require_one_of("metrics.flops.mode", run.metrics.flops.mode, FLOP_MODES)
    require_one_of("metrics.quality.enabled", run.metrics.quality.enabled, (True, False, "auto"))
    require(s.cfg >= 1.0,
           f"sampler.cfg={s.cfg} is below 1. Classifier-free guidance scales start at 1.0 (no guidance); "
           "set sampler.cfg=1.0 to switch it off or a value above 1 to guide.")  # fmt: skip
    temperature = getattr(s, "temperature", 1.0)
    require(temperature > 0, f"sampler.temperature={temperature} must be positive (1.0 is the default).")
    require(d.num_images >= 1, f"data.num_images={d.num_images} must be at least 1.")
    require(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be at least 1.")
    num_classes = m.num_classes
    if isinstance(d.labels, str):
        require_one_of("data.labels", d.labels, ("balanced", "random"))
    else:
        labels = list(d.labels)
        require(len(labels) > 0 and all(0 <= int(c) < num_classes for c in labels),
               f"data.labels={labels} must be a non-empty list of class ids in [0, {num_classes}).")  # fmt: skip
    if isinstance(m, SyntheticModelConf):
        require(
            m.init == "random", f"model.init={m.init}: the synthetic model has no weights; leave it random."
        )
        require(m.image_size >= 1 and m.coarse >= 1,
                f"model.image_size={m.image_size} and model.coarse={m.coarse} must be at least 1.")  # fmt: skip
    elif m.init == "pretrained":
        require(m.weights.registry is not None or m.weights.path is not None,
               f"model {m.name} wants pretrained weights but names neither model.weights.path nor "
               "model.weights.registry; set one, or model.init=random.")  # fmt: skip
    if isinstance(m, LlamaGenModelConf):
        _validate_llamagen(run)
    elif isinstance(m, ModelConf):
        _validate_mar(run)
    for kind in ("sampler", "cache"):  # each component's own checks, against the whole run
        check = component(kind, getattr(run, kind).name).check
        if check is not None:
            check(getattr(run, kind), run)


def _validate_llamagen(run: RunConf) -> None:
    m = run.model
    if m.tokenizer.kind == "vq16":
        require(m.image_size == VQ_DOWNSAMPLE * m.arch.grid_size,
               f"model.image_size={m.image_size} does not match model.arch.block_size={m.arch.block_size} "
               f"(a {m.arch.grid_size}x{m.arch.grid_size} VQ-16 grid is {VQ_DOWNSAMPLE * m.arch.grid_size} px).")  # fmt: skip
    else:
        require(m.arch.vocab_size == m.tokenizer.levels,
               f"model.arch.vocab_size={m.arch.vocab_size} must equal model.tokenizer.levels="
               f"{m.tokenizer.levels}: every token id is one intensity level.")  # fmt: skip


def _validate_mar(run: RunConf) -> None:
    """Checks of the model and of the settings every MAR sampler shares."""
    m, s = run.model, run.sampler
    require(isinstance(s, MARSamplerConf),
            f"sampler={s.name} has no MAR sampler settings (its schema must extend MARSamplerConf).")  # fmt: skip
    require_one_of("sampler.cfg_schedule", s.cfg_schedule, CFG_SCHEDULES)
    a = m.arch
    require(a.img_size % (a.vae_stride * a.patch_size) == 0,
           f"model.arch.img_size={a.img_size} must be a multiple of vae_stride * patch_size "
           f"({a.vae_stride * a.patch_size}).")  # fmt: skip
    for side in ("encoder", "decoder"):
        dim, heads = getattr(a, f"{side}_embed_dim"), getattr(a, f"{side}_num_heads")
        require(dim % heads == 0,
               f"model.arch.{side}_embed_dim={dim} is not divisible by {side}_num_heads={heads}; "
               "pick a head count that divides the width.")  # fmt: skip
    require(
        1 <= s.num_iter <= a.seq_len,
        f"sampler.num_iter={s.num_iter} is out of range: a {a.seq_len}-token image takes between 1 and "
        f"{a.seq_len} steps. Set sampler.num_iter to a value in that range (64 is the usual choice).",
    )
    require(s.diffusion_steps is None or MIN_SAMPLING_STEPS <= s.diffusion_steps <= TRAIN_TIMESTEPS,
           f"sampler.diffusion_steps={s.diffusion_steps} must be between {MIN_SAMPLING_STEPS} and 1000 (the "
           "learned variance needs two steps), or null for the model's default.")  # fmt: skip
    require(not m.clip_denoised or m.tokenizer.kind == "pixel" or m.tokenizer.latent_bound is not None,
           f"model.clip_denoised=true needs bounded tokens, but these {m.tokenizer.kind} latents have no "
           "model.tokenizer.latent_bound; set model.clip_denoised=false (the official MAR setting) or give the "
           "bound (a lazygen-trained autoencoder's manifest records it as latent_abs_max).")  # fmt: skip


PLAIN_GROUPS = ("hardware", "data", "metrics", "logger", "callbacks")  # one schema each: option <group>/base


def store_schemas() -> None:
    """Every group's dataclass defaults in Hydra's ConfigStore, so each default is written once, here.

    A YAML of ``conf/<group>/`` lists ``base_<family>`` (model), ``base`` (the plain groups) or, for
    samplers and cache policies, ``base_<name>`` (stored by :func:`lazygen.registry.register`) first in
    its defaults and sets only what differs.
    """
    load_builtin_components()  # each registration stores its sampler/base_<name> or cache/base_<name>
    for family, schema in MODEL_SCHEMAS.items():
        store_defaults("model", f"{SCHEMA_PREFIX}{family}", schema())
    for group in PLAIN_GROUPS:
        store_defaults(group, BASE_OPTION, GROUPS[group]())


store_schemas()  # importing lazygen.config makes the base options composable
