"""Dataclass schemas for every config group, and their validation.

Hydra composes plain YAML; ``validate`` merges each group into its schema (so unknown keys and wrong types
fail), then range-checks values and cross-group compatibility. Every failure is a :class:`ConfigError`
whose message names the key, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lazygen.cache.adsa import ADSAConf
from lazygen.cache.lazymar import LazyMARConf
from lazygen.errors import ConfigError, advise, require, require_one_of
from lazygen.models.llamagen.gpt import LlamaGenArch
from lazygen.models.mar.mar import MARArch
from lazygen.models.vae.kl import KLArch
from lazygen.samplers.ar import ARSamplerConf
from lazygen.samplers.disa import ANNEALING, DiSASamplerConf
from lazygen.samplers.gtr import BISECTIONS, FTS_SELECTIONS, ORDERS, GtRSamplerConf, partition
from lazygen.samplers.halton import HALTON_SCHEDULES, HaltonSamplerConf
from lazygen.samplers.mar import CFG_SCHEDULES, MARSamplerConf
from lazygen.samplers.rng import RNG_PROTOCOLS

# ``${sum:${.stage_steps}}``: GtR's step count follows its per-stage counts, so sweeps vary only those.
OmegaConf.register_new_resolver("sum", lambda values: sum(values), replace=True)

MODEL_FAMILIES = ("mar", "llamagen")
SAMPLERS = ("mar", "steps", "halton", "disa", "gtr", "ar")
CACHE_POLICIES = ("none", "lazymar", "adsa")
TOKENIZERS = ("kl16", "kl", "pixel", "vq16", "levels")
# what each family decodes with: MAR's masked samplers, LlamaGen's next-token one
FAMILY_SAMPLERS = {"mar": ("mar", "steps", "halton", "disa", "gtr"), "llamagen": ("ar",)}
FAMILY_TOKENIZERS = {"mar": ("kl16", "kl", "pixel"), "llamagen": ("vq16", "levels")}
LOGGERS = ("wandb", "csv", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
FLOP_MODES = ("auto", "meta", "real")
VQ_DOWNSAMPLE = 16  # VQ-16: one token per 16x16 pixels
MIN_DIFFUSION_STEPS = 2
MAX_DIFFUSION_STEPS = 1000  # the training chain


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
    default_cfg: float = 3.0
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
    evaluator: EvaluatorConf = field(default_factory=EvaluatorConf)

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes


# The schema of the model group, chosen by its ``family``.
MODEL_SCHEMAS: dict[str, type] = {"mar": ModelConf, "llamagen": LlamaGenModelConf}

# The schema of each sampler's config group, chosen by its ``name``.
# Each sampler's own config dataclass is the schema (``name`` included).
SAMPLER_SCHEMAS: dict[str, type[MARSamplerConf]] = {
    "mar": MARSamplerConf,
    "steps": MARSamplerConf,  # MAR with fewer steps: the baseline of every acceleration table
    "halton": HaltonSamplerConf,
    "disa": DiSASamplerConf,
    "gtr": GtRSamplerConf,
    "ar": ARSamplerConf,
}


@dataclass
class CacheConf:
    """``cache=none``: no reuse. Other policies have their own schema (``CACHE_SCHEMAS``)."""

    name: str = "none"

    @property
    def tag(self) -> str:
        return self.name


# The schema of each cache policy's config group, chosen by its ``name``.
CACHE_SCHEMAS: dict[str, type] = {"none": CacheConf, "lazymar": LazyMARConf, "adsa": ADSAConf}


@dataclass
class HardwareConf:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_threads: int | None = None


@dataclass
class DataConf:
    num_images: int = 20
    labels: Any = "balanced"
    batch_size: int = 20
    seed: int = 0


@dataclass
class FlopsConf:
    enabled: bool = True
    mode: str = "auto"
    num_images: int = 1


@dataclass
class QualityConf:
    enabled: Any = "auto"  # auto: on when the model's evaluator ships with lazygen (tiny models)
    extractor: str = "auto"  # auto = model.evaluator.extractor
    reference_stats: str | None = "auto"  # auto = model.evaluator.reference_stats
    is_splits: int = 10
    bootstrap: int = 100  # resamples of the generated images behind quality/fid_se and class_acc_se (0: off)


@dataclass
class SpeedupConf:
    enabled: Any = "auto"
    num_images: int = 4


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
    sampler: MARSamplerConf | HaltonSamplerConf | DiSASamplerConf | GtRSamplerConf | ARSamplerConf
    cache: CacheConf | LazyMARConf | ADSAConf
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
    """The dataclass of a group; the sampler's and the cache's depend on their name, the model's on its family."""
    choice = {
        "sampler": (SAMPLER_SCHEMAS, "name"),
        "cache": (CACHE_SCHEMAS, "name"),
        "model": (MODEL_SCHEMAS, "family"),
    }
    if group not in choice:
        return default
    schemas, key = choice[group]
    fallback = getattr(default(), key)
    name = node.get(key, fallback) if isinstance(node, DictConfig | dict) else fallback
    require_one_of(f"{group}.{key}", name, tuple(schemas))
    return schemas[name]


def validate(cfg: DictConfig) -> RunConf:
    """Typed, range-checked configuration of a run, or a ConfigError saying what to fix."""
    if "name" in cfg.get("data", {}):
        raise ConfigError(
            f"data={cfg.data.name} is a training dataset (for `python -m lazygen.train`); a generation run's "
            "data group says which samples to generate. Use data=default and set data.num_images, "
            "data.labels or data.batch_size instead."
        )
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


def _validate_gtr(s: GtRSamplerConf, side: int) -> None:
    require_one_of("sampler.bisection", s.bisection, BISECTIONS)
    require_one_of("sampler.order", s.order, ORDERS)
    require(s.order != "subsample" or side % 2 == 0,
            f"sampler.order=subsample needs an even grid side (got {side}); use raster, random or gtr.")  # fmt: skip
    require(s.stages >= 2 and 2**(s.stages - 1) <= side * side,
           f"sampler.stages={s.stages} must be at least 2 (generation, then reconstruction) and leave every "
           "stage a cell of the grid.")  # fmt: skip
    sizes = [len(cells) for cells in partition(side, s.stages, s.bisection)]
    require(len(s.stage_steps) == s.stages and all(1 <= n <= size for n, size in zip(s.stage_steps, sizes, strict=False)),
           f"sampler.stage_steps={s.stage_steps} needs one step count per stage ({s.stages}), each between 1 and "
           f"the stage's size {sizes}.")  # fmt: skip
    require(sum(s.stage_steps) == s.num_iter,
           f"sampler.num_iter={s.num_iter} must equal the sum of sampler.stage_steps={s.stage_steps} "
           f"({sum(s.stage_steps)}); set sampler.num_iter={sum(s.stage_steps)}.")  # fmt: skip
    require_one_of("sampler.fts_select", s.fts_select, FTS_SELECTIONS)
    require(
        0.0 <= s.fts_fraction <= 1.0, f"sampler.fts_fraction={s.fts_fraction} must be in [0, 1] (GtR: 0.1)."
    )
    for key in ("t_max", "t_min", "t_rec", "t_detail"):
        value = getattr(s, key)
        require(MIN_DIFFUSION_STEPS <= value <= MAX_DIFFUSION_STEPS,
               f"sampler.{key}={value} must be between {MIN_DIFFUSION_STEPS} and {MAX_DIFFUSION_STEPS}.")  # fmt: skip
    require(s.diffusion_steps is None,
           f"sampler.diffusion_steps={s.diffusion_steps} does not apply to sampler=gtr, whose diffusion steps "
           "are stage-aware (sampler.t_max, t_min, t_rec); leave it null.")  # fmt: skip


def _validate_values(run: RunConf) -> None:
    m, s, d = run.model, run.sampler, run.data
    require_one_of("model.family", m.family, MODEL_FAMILIES)
    require_one_of("model.init", m.init, ("pretrained", "random"))
    require_one_of("model.tokenizer.kind", m.tokenizer.kind, FAMILY_TOKENIZERS[m.family])
    require_one_of("sampler.name", s.name, SAMPLERS)
    require(s.name in FAMILY_SAMPLERS[m.family],
            f"sampler={s.name} cannot decode model={m.name} (a {m.family} model); use "
            f"sampler={' or sampler='.join(FAMILY_SAMPLERS[m.family])}.")  # fmt: skip
    require_one_of("cache.name", run.cache.name, CACHE_POLICIES)
    require_one_of("sampler.rng", s.rng, RNG_PROTOCOLS)
    require_one_of("logger.kind", run.logger.kind, LOGGERS)
    require_one_of("logger.mode", run.logger.mode, WANDB_MODES)
    require_one_of("metrics.flops.mode", run.metrics.flops.mode, FLOP_MODES)
    require_one_of("metrics.quality.enabled", run.metrics.quality.enabled, (True, False, "auto"))
    require(s.cfg >= 1.0,
           f"sampler.cfg={s.cfg} is below 1. Classifier-free guidance scales start at 1.0 (no guidance); "
           "set sampler.cfg=1.0 to switch it off or a value above 1 to guide.")  # fmt: skip
    require(s.temperature > 0, f"sampler.temperature={s.temperature} must be positive (1.0 is the default).")
    require(d.num_images >= 1, f"data.num_images={d.num_images} must be at least 1.")
    require(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be at least 1.")
    num_classes = m.num_classes
    if isinstance(d.labels, str):
        require_one_of("data.labels", d.labels, ("balanced", "random"))
    else:
        labels = list(d.labels)
        require(len(labels) > 0 and all(0 <= int(c) < num_classes for c in labels),
               f"data.labels={labels} must be a non-empty list of class ids in [0, {num_classes}).")  # fmt: skip
    if m.init == "pretrained":
        require(m.weights.registry is not None or m.weights.path is not None,
               f"model {m.name} wants pretrained weights but names neither model.weights.path nor "
               "model.weights.registry; set one, or model.init=random.")  # fmt: skip
    if isinstance(m, LlamaGenModelConf):
        _validate_llamagen(run)
    else:
        _validate_mar(run)


def _validate_llamagen(run: RunConf) -> None:
    m, s = run.model, run.sampler
    require(s.num_iter == m.arch.block_size,
           f"sampler.num_iter={s.num_iter}: next-token decoding takes one step per image token "
           f"({m.arch.block_size}); leave it at ${{model.default_num_iter}} (set to {m.arch.block_size}).")  # fmt: skip
    require(s.top_k >= 0, f"sampler.top_k={s.top_k} must be 0 (off) or a positive number of tokens.")
    if s.top_k >= m.arch.vocab_size:
        advise(f"sampler.top_k={s.top_k} keeps every one of the {m.arch.vocab_size} tokens of model={m.name}'s "
               f"vocabulary, so it filters nothing (the same as sampler.top_k=0). Set it below "
               f"{m.arch.vocab_size} to restrict sampling.")  # fmt: skip
    require(
        0 < s.top_p <= 1, f"sampler.top_p={s.top_p} must be in (0, 1]; 1.0 switches nucleus sampling off."
    )
    require(
        s.cfg_interval >= -1, f"sampler.cfg_interval={s.cfg_interval} must be -1 (always guide) or a step."
    )
    if m.tokenizer.kind == "vq16":
        require(m.image_size == VQ_DOWNSAMPLE * m.arch.grid_size,
               f"model.image_size={m.image_size} does not match model.arch.block_size={m.arch.block_size} "
               f"(a {m.arch.grid_size}x{m.arch.grid_size} VQ-16 grid is {VQ_DOWNSAMPLE * m.arch.grid_size} px).")  # fmt: skip
    else:
        require(m.arch.vocab_size == m.tokenizer.levels,
               f"model.arch.vocab_size={m.arch.vocab_size} must equal model.tokenizer.levels="
               f"{m.tokenizer.levels}: every token id is one intensity level.")  # fmt: skip
    if run.cache.name == "lazymar":
        raise ConfigError(f"cache=lazymar caches MAR's masked decoding and cannot run model={m.name}; use "
                          "cache=none or cache=adsa for LlamaGen models.")  # fmt: skip
    if isinstance(run.cache, ADSAConf):
        run.cache.check(m.arch.block_size, m.arch.grid_size, f"model={m.name}")


def _validate_mar(run: RunConf) -> None:
    m, s = run.model, run.sampler
    if isinstance(run.cache, ADSAConf):
        raise ConfigError(
            f"cache=adsa prunes a causal model's KV cache and cannot run model={m.name} (MAR); "
            "use cache=none or cache=lazymar for MAR models, or a llamagen_* model."
        )
    if isinstance(run.cache, LazyMARConf):
        run.cache.check(cfg_on=s.cfg != 1.0, decoder_depth=m.arch.decoder_depth, model_family=m.family)
        if s.num_iter <= run.cache.refresh_start:
            advise(f"cache.refresh_start={run.cache.refresh_start} covers all sampler.num_iter={s.num_iter} steps, "
                   "so every step runs the transformer in full and LazyMAR reuses only the diffusion head's "
                   f"work. Set cache.refresh_start below {s.num_iter} to cache the transformer too.")  # fmt: skip
    require_one_of("sampler.cfg_schedule", s.cfg_schedule, CFG_SCHEDULES)
    if isinstance(s, HaltonSamplerConf):
        require_one_of("sampler.schedule", s.schedule, HALTON_SCHEDULES)
    if isinstance(s, GtRSamplerConf):
        _validate_gtr(s, m.arch.seq_h)
    if isinstance(s, DiSASamplerConf):
        require_one_of("sampler.annealing", s.annealing, ANNEALING)
        require(s.diffusion_steps is None,
               f"sampler.diffusion_steps={s.diffusion_steps} does not apply to sampler=disa, which picks the "
               "diffusion steps of each AR step between sampler.upper and sampler.lower; leave it null.")  # fmt: skip
        require(MIN_DIFFUSION_STEPS <= s.lower <= s.upper <= MAX_DIFFUSION_STEPS,
               f"sampler.lower={s.lower} and sampler.upper={s.upper} must satisfy {MIN_DIFFUSION_STEPS} <= lower "
               f"<= upper <= {MAX_DIFFUSION_STEPS} (DiSA's default: 5 and 50).")  # fmt: skip
        require(s.max_timestep is None or 0 < s.max_timestep < MAX_DIFFUSION_STEPS,
               f"sampler.max_timestep={s.max_timestep} must be a training timestep below "
               f"{MAX_DIFFUSION_STEPS} (DiSA: 950), or null for no clipping.")  # fmt: skip
    a = m.arch
    require(a.img_size % (a.vae_stride * a.patch_size) == 0,
           f"model.arch.img_size={a.img_size} must be a multiple of vae_stride * patch_size "
           f"({a.vae_stride * a.patch_size}).")  # fmt: skip
    for side in ("encoder", "decoder"):
        dim, heads = getattr(a, f"{side}_embed_dim"), getattr(a, f"{side}_num_heads")
        require(dim % heads == 0,
               f"model.arch.{side}_embed_dim={dim} is not divisible by {side}_num_heads={heads}; "
               "pick a head count that divides the width.")  # fmt: skip
    if s.name == "steps" and s.num_iter >= m.default_num_iter:
        advise(f"sampler=steps with sampler.num_iter={s.num_iter} takes no fewer steps than model={m.name}'s "
               f"default ({m.default_num_iter}), so it accelerates nothing. Set sampler.num_iter below "
               f"{m.default_num_iter} (the tables use 32, 16 and 8).")  # fmt: skip
    require(
        1 <= s.num_iter <= a.seq_len,
        f"sampler.num_iter={s.num_iter} is out of range: a {a.seq_len}-token image takes between 1 and "
        f"{a.seq_len} steps. Set sampler.num_iter to a value in that range (64 is the usual choice).",
    )
    require(s.diffusion_steps is None or MIN_DIFFUSION_STEPS <= s.diffusion_steps <= MAX_DIFFUSION_STEPS,
           f"sampler.diffusion_steps={s.diffusion_steps} must be between {MIN_DIFFUSION_STEPS} and 1000 (the "
           "learned variance needs two steps), or null for the model's default.")  # fmt: skip
    require(not m.clip_denoised or m.tokenizer.kind == "pixel" or m.tokenizer.latent_bound is not None,
           f"model.clip_denoised=true needs bounded tokens, but these {m.tokenizer.kind} latents have no "
           "model.tokenizer.latent_bound; set model.clip_denoised=false (the official MAR setting) or give the "
           "bound (a lazygen-trained autoencoder's manifest records it as latent_abs_max).")  # fmt: skip
