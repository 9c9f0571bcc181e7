"""The cache-policy interface: what a sampler asks for at each decoding step.

A sampler owns the order and schedule of decoding; a policy owns the reuse of computation. At each step
the sampler hands the policy a :class:`StepContext` and asks it for the transformer's per-position
conditions and for the diffusion head's samples. The baseline policy (``none``) computes both in full;
LazyMAR-style policies drive the model's mechanisms (row-subset forwards with cached keys/values,
conditional-only forwards) to skip work. Policies keep per-generation state: ``reset`` starts a new batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import NoiseFn


@dataclass
class StepContext:
    """What the sampler knows about the current step; positions are (B, n) ascending index tensors."""

    step: int
    num_steps: int
    predicted_prev: torch.Tensor | None  # positions predicted at the previous step
    predicted_now: torch.Tensor  # positions predicted at this step
    cfg_on: bool  # the transformer batch is [cond; uncond]
    refresh: bool = True  # the sampler asks for a full recomputation (e.g. a stage start)


@dataclass
class CacheStats:
    """Counters every policy reports; ``none`` recomputes everything."""

    full_steps: int = 0
    reused_steps: int = 0
    recomputed_tokens: int = 0
    total_tokens: int = 0

    def counters(self) -> dict[str, int]:
        return asdict(self)


class CachePolicy:
    """Base policy = no reuse. Subclasses override the two compute entry points and ``tag``."""

    name = "none"
    model_families: tuple[str, ...] = ("mar",)
    # True when the work done never depends on tensor values, so FLOPs can be counted on the meta device
    static_shapes = True

    def __init__(self) -> None:
        self.stats = CacheStats()

    @property
    def tag(self) -> str:
        """Short identifier used in run names."""
        return self.name

    def reset(self, batch_size: int) -> None:
        """Forget all per-generation state before a new batch."""

    def transformer(
        self, model, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor, ctx: StepContext
    ) -> torch.Tensor:
        """Per-position diffusion conditions z (N, L, D) for this step."""
        self.stats.full_steps += 1
        n, length = tokens.shape[:2]
        self.stats.recomputed_tokens += n * length
        self.stats.total_tokens += n * length
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


NoCache = CachePolicy
