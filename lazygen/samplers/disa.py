"""DiSA, diffusion step annealing (Zhao et al., 2025), on MAR: fewer diffusion steps as decoding advances.

Only the diffusion head changes: AR step s of S runs T(s) respaced diffusion steps, annealed from
``upper`` to ``lower`` (linear: ``L + floor((S-1-s)/(S-1) * (U-L))``; cosine; two-stage; constant).
As DiSA's MAR code, the respaced timesteps are clipped at ``max_timestep`` (950), so the chain starts
there and clipped steps merge (T = 50 keeps 48 distinct steps); ``max_timestep: null`` turns that off.
Order, token counts, CFG and cache policies are MAR's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import MIN_SAMPLING_STEPS, TRAIN_TIMESTEPS
from lazygen.errors import require, require_one_of
from lazygen.registry import register
from lazygen.samplers.mar import MARSampler, MARSamplerConf

ANNEALING = ("linear", "cosine", "two_stage", "constant")


def annealed_steps(step: int, num_iter: int, upper: int, lower: int, annealing: str) -> int:
    """T(s): the diffusion steps of AR step ``step``."""
    span = upper - lower
    last = max(num_iter - 1, 1)
    if annealing == "linear":
        return lower + math.floor((num_iter - 1 - step) / last * span)
    if annealing == "cosine":
        return lower + math.floor((1 + math.cos(math.pi * step / last)) / 2 * span)
    if annealing == "two_stage":
        return upper if step < (num_iter - 1) / 2 else lower
    if annealing == "constant":
        return lower
    raise ValueError(f"unknown annealing {annealing!r}; choose one of {ANNEALING}")


@dataclass
class DiSASamplerConf(MARSamplerConf):
    name: str = "disa"
    upper: int = 50  # diffusion steps at the first AR step
    lower: int = 5  # ... and at the last
    annealing: str = "linear"
    max_timestep: int | None = 950  # DiSA's clipping of respaced timesteps; null = none


def check_disa(s: DiSASamplerConf, run) -> None:
    require_one_of("sampler.annealing", s.annealing, ANNEALING)
    require(s.diffusion_steps is None,
           f"sampler.diffusion_steps={s.diffusion_steps} does not apply to sampler=disa, which picks the "
           "diffusion steps of each AR step between sampler.upper and sampler.lower; leave it null.")  # fmt: skip
    require(MIN_SAMPLING_STEPS <= s.lower <= s.upper <= TRAIN_TIMESTEPS,
           f"sampler.lower={s.lower} and sampler.upper={s.upper} must satisfy {MIN_SAMPLING_STEPS} <= lower "
           f"<= upper <= {TRAIN_TIMESTEPS} (DiSA's default: 5 and 50).")  # fmt: skip
    require(s.max_timestep is None or 0 < s.max_timestep < TRAIN_TIMESTEPS,
           f"sampler.max_timestep={s.max_timestep} must be a training timestep below "
           f"{TRAIN_TIMESTEPS} (DiSA: 950), or null for no clipping.")  # fmt: skip


@register("sampler", "disa", schema=DiSASamplerConf, families=("mar",), check=check_disa)
class DiSASampler(MARSampler):
    name = "disa"

    def __init__(self, conf: DiSASamplerConf) -> None:
        super().__init__(conf)
        self.conf: DiSASamplerConf = conf

    def steps_at(self, step: int) -> int:
        c = self.conf
        return annealed_steps(step, c.num_iter, c.upper, c.lower, c.annealing)

    def step_diffusion(self, model, step: int) -> SpacedDiffusion:
        return self.respaced(model, self.steps_at(step), self.conf.max_timestep)
