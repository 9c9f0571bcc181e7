"""The cache-policy interface: what a sampler asks for at each decoding step.

A sampler owns the order and schedule of decoding; a policy owns the reuse of computation. At each step
the sampler hands the policy a :class:`StepContext` and asks it for the transformer's per-position
conditions and for the diffusion head's samples. The baseline policy (``none``) computes both in full;
LazyMAR-style policies drive the model's mechanisms (row-subset forwards with cached keys/values,
conditional-only forwards) to skip work. Policies keep per-generation state: ``reset`` starts a new batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import NoiseFn
from lazygen.registry import register


@dataclass
class StepContext:
    """What the sampler knows about the current step; positions are (B, n) ascending index tensors."""

    step: int
    num_steps: int
    predicted_prev: torch.Tensor | None  # positions predicted at the previous step
    predicted_now: torch.Tensor  # positions predicted at this step
    cfg_on: bool  # the transformer batch is [cond; uncond]
    refresh: bool = False  # the sampler asks for a full recomputation (e.g. a stage start)


@dataclass
class CacheStats:
    """Counters every policy reports; ``none`` recomputes everything.

    Token counts are (row, position) pairs run through a transformer layer, summed over layers; the
    total is what the baseline would run (both CFG halves, every position), so recomputed / total is the
    fraction of transformer work done. ``by_layer`` and ``by_step`` break the same counts down as
    ``{layer: [recomputed, total]}`` and ``[[recomputed, total] per step]``. Head evaluations count
    diffusion-head network calls over rows, split into full ones and those served partly from a cache.
    """

    full_steps: int = 0
    reused_steps: int = 0
    recomputed_tokens: int = 0
    total_tokens: int = 0
    head_evals: int = 0
    head_full_evals: int = 0
    by_layer: dict[str, list[int]] = field(default_factory=dict)
    by_step: list[list[int]] = field(default_factory=list)
    by_layer_step: dict[str, list[list[int]]] = field(default_factory=dict)  # {layer: by_step}
    # causal models: image tokens attended vs. held by a full cache (rows x layers x steps), and the bytes
    # of the KV caches a generation allocated (its largest batch; per image: bytes / images of that batch)
    attended_tokens: int = 0
    context_tokens: int = 0
    kv_cache_bytes: int = 0
    kv_cache_bytes_per_img: float = 0.0
    # sequential forward passes of the generator network in this generation (every image of the batch
    # waits for all of them), and sampler-specific counters: lists add up element-wise across batches
    model_calls: int = 0
    sampler: dict[str, list[int]] = field(default_factory=dict)

    def count(self, layer: str, step: int, recomputed: int, total: int) -> None:
        """Record one layer's work at one step."""
        self.recomputed_tokens += recomputed
        self.total_tokens += total
        self._add(self.by_layer.setdefault(layer, [0, 0]), recomputed, total)
        self._add(self._step(step), recomputed, total)
        self._add(self._step(step, self.by_layer_step.setdefault(layer, [])), recomputed, total)

    def merge(self, other: CacheStats) -> None:
        """Add another generation's counters (e.g. another batch's) to these."""
        for name in ("full_steps", "reused_steps", "recomputed_tokens", "total_tokens", "head_evals",
                     "head_full_evals", "attended_tokens", "context_tokens", "model_calls"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, values in other.sampler.items():
            self.add_sampler(name, values)
        self.kv_cache_bytes = max(self.kv_cache_bytes, other.kv_cache_bytes)
        self.kv_cache_bytes_per_img = max(self.kv_cache_bytes_per_img, other.kv_cache_bytes_per_img)
        for layer, (recomputed, total) in other.by_layer.items():
            self._add(self.by_layer.setdefault(layer, [0, 0]), recomputed, total)
        for step, (recomputed, total) in enumerate(other.by_step):
            self._add(self._step(step), recomputed, total)
        for layer, steps in other.by_layer_step.items():
            for step, (recomputed, total) in enumerate(steps):
                self._add(self._step(step, self.by_layer_step.setdefault(layer, [])), recomputed, total)

    def add_sampler(self, name: str, values: list[int]) -> None:
        """Add a sampler counter series element-wise (the longer series sets the length)."""
        series = self.sampler.setdefault(name, [])
        series.extend([0] * (len(values) - len(series)))
        for i, value in enumerate(values):
            series[i] += int(value)

    def _step(self, step: int, series: list[list[int]] | None = None) -> list[int]:
        series = self.by_step if series is None else series
        while len(series) <= step:
            series.append([0, 0])
        return series[step]

    @staticmethod
    def _add(entry: list[int], recomputed: int, total: int) -> None:
        entry[0] += recomputed
        entry[1] += total

    def counters(self) -> dict:
        return asdict(self)


@dataclass
class CacheConf:
    """``cache=none``: no reuse. Other policies have their own schema, registered with their class."""

    name: str = "none"

    @property
    def tag(self) -> str:
        return self.name


class CachePolicy:
    """What every policy has: counters, a tag for run names, and per-generation state (``reset``). The
    compute entry points are per model family: :class:`MARPolicy` and :class:`CausalPolicy`."""

    name = "none"

    def __init__(self, conf: CacheConf | None = None) -> None:
        self.stats = CacheStats()
        self.conf = conf if conf is not None else CacheConf(name=self.name)

    @property
    def tag(self) -> str:
        """Short identifier used in run names: the schema's ``tag`` where it has one, else the name."""
        return getattr(self.conf, "tag", self.name)

    def reset(self, batch_size: int) -> None:
        """Forget all per-generation state before a new batch."""


class MARPolicy(CachePolicy):
    """The MAR protocol: the sampler's plan, the transformer's per-position conditions at each step, and
    the diffusion head's samples. The base computes everything in full."""

    def plan(self, predicted: list[torch.Tensor], refresh: list[bool]) -> list[torch.Tensor]:
        """The positions each step predicts, given the sampler's plan before the first step.

        ``predicted[s]`` is step s's (B, n_s) ascending positions and ``refresh[s]`` whether the sampler
        forces a full recomputation there. A policy that serves several steps from one full forward (a
        *group*) learns the coming steps here, and may reassign positions among the steps of a group:
        each step keeps its count, the group keeps its positions, and no refresh step joins an earlier
        group. The baseline keeps the sampler's plan.
        """
        return predicted

    def head_diffusion(self, diffusion: SpacedDiffusion, ctx: StepContext) -> SpacedDiffusion:
        """The diffusion process the head samples this step with (the sampler's unless a policy
        shortens the chain, e.g. on cheap steps); asked before the step's noise is drawn."""
        return diffusion

    def transformer(
        self, model, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor, ctx: StepContext
    ) -> torch.Tensor:
        """Per-position diffusion conditions z (N, L, D) for this step."""
        self.stats.full_steps += 1
        n, length = tokens.shape[:2]
        self.stats.count("transformer", ctx.step, n * length, n * length)
        return model.conditions(tokens, rows, cond)

    def diffusion_head(
        self,
        model,
        z: torch.Tensor,
        x_init: torch.Tensor,
        noise_fn: NoiseFn,
        temperature: float,
        cfg: float | torch.Tensor | None,
        diffusion: SpacedDiffusion,
        ctx: StepContext,
    ) -> torch.Tensor:
        """Sampled tokens (R, C) for the predicted rows' conditions z."""
        return model.diffloss.sample(z, x_init, noise_fn, temperature, cfg, diffusion)


class CausalPolicy(CachePolicy):
    """The causal-model (LlamaGen) protocol: per-layer KV caches and the decode passes over them. The base
    keeps a full cache and attends to all of it."""

    def kv_caches(self, model, rows: int, device: torch.device) -> list:
        """One KV cache per layer for a generation of ``rows`` sequences (CFG halves included)."""
        return model.new_caches(rows, device=device)

    def note_kv_memory(self, caches: list, images: int) -> None:
        """Record the bytes the caches hold: keys, values and any bookkeeping (each cache's ``nbytes``)."""
        nbytes = sum(c.nbytes for c in caches)
        self.stats.kv_cache_bytes = nbytes
        self.stats.kv_cache_bytes_per_img = nbytes / images

    def decode(self, model, tokens: torch.Tensor, pos: int, caches: list, ctx: StepContext) -> torch.Tensor:
        """Logits (R, 1, V) of one decode step: ``tokens`` (R, 1) at absolute position ``pos``."""
        self.stats.full_steps += 1
        cached = (pos + 1 - model.cls_token_num) * tokens.shape[0] * len(caches)
        self.stats.attended_tokens += cached
        self.stats.context_tokens += cached
        return model.step(tokens, pos, caches)

    def decode_many(
        self, model, tokens: torch.Tensor, pos: torch.Tensor, caches: list, ctx: StepContext
    ) -> torch.Tensor:
        """Logits (R, T, V) of one forward over several new tokens (R, T) at ascending positions ``pos`` (T,)
        (parallel decoders: a draft window, or one token per row in flight)."""
        self.stats.full_steps += 1
        cached = sum(int(p) + 1 - model.cls_token_num for p in pos) * tokens.shape[0] * len(caches)
        self.stats.attended_tokens += cached
        self.stats.context_tokens += cached
        return model.decode(tokens, pos, caches)

    def rollback(self, caches: list, length: int) -> None:
        """Forget every cached entry at a position >= ``length`` (rejected drafts)."""
        for cache in caches:
            cache.truncate(length)


@register("cache", "none", schema=CacheConf, families=("mar", "llamagen", "synthetic"))
class NoCache(MARPolicy, CausalPolicy):
    """``cache=none``: no reuse, for every family."""

    name = "none"
