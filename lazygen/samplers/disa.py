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
