"""Halton order (Besnier et al., ICLR 2025) on MAR: a fixed low-discrepancy reveal order instead of a random one.

The 2D Halton sequence (base 2 for rows, base 3 for columns, from k = 1) visits grid cells spread out in
space; keeping each cell the first time it appears gives a reveal order of all n² cells. Each image may
roll that list by its own random offset (``randomize``). The number of tokens per step is MAR's cosine
schedule by default (only the order changes, as GtR's "+Halton" rows have the speedup of "+Step"), or
Halton-MaskGIT's arccos schedule. Everything else (CFG, diffusion head, cache policies) is MAR's sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import torch

from lazygen.errors import require_one_of
from lazygen.registry import register
from lazygen.samplers.mar import MARSampler, MARSamplerConf, mask_schedule
from lazygen.samplers.rng import RandomSource

HALTON_SCHEDULES = ("cosine", "arccos")
ROW_BASE, COL_BASE = 2, 3


def radical_inverse(k: int, base: int) -> Fraction:
    """k's digits in ``base`` mirrored about the radix point (exact): phi_2(3) = 3/4, phi_3(1) = 1/3."""
    result, scale = Fraction(0), Fraction(1)
    while k:
        k, digit = divmod(k, base)
        scale /= base
        result += digit * scale
    return result


@cache
def halton_cells(side: int) -> tuple[int, ...]:
    """Flat cell indices (row * side + col) of a side x side grid in Halton reveal order, first first."""
    seen: dict[int, None] = {}
    k = 1
    while len(seen) < side * side:
        row = math.floor(side * radical_inverse(k, ROW_BASE))
        col = math.floor(side * radical_inverse(k, COL_BASE))
        seen.setdefault(row * side + col, None)
        k += 1
    return tuple(seen)


def arccos_schedule(seq_len: int, num_iter: int) -> list[int]:
    """Halton-MaskGIT's schedule as tokens still unknown after each step: many early, a big last chunk."""
    revealed = [
        max(s + 1, math.floor(seq_len * (1 - (2 / math.pi) * math.acos((s + 1) / num_iter))))
        for s in range(num_iter)
    ]
    revealed[-1] = seq_len
    return [seq_len - min(c, seq_len) for c in revealed]


@dataclass
class HaltonSamplerConf(MARSamplerConf):
    name: str = "halton"
    randomize: bool = True  # roll the order by a random offset per image
    schedule: str = "cosine"  # cosine (MAR's counts) | arccos (Halton-MaskGIT's)


def check_halton(conf: HaltonSamplerConf, run) -> None:
    require_one_of("sampler.schedule", conf.schedule, HALTON_SCHEDULES)


@register("sampler", "halton", schema=HaltonSamplerConf, families=("mar",), check=check_halton)
class HaltonSampler(MARSampler):
    name = "halton"
    # lazygen.audit: this sampler changes quality, not cost
    same_work_reason = "only the reveal order changes; the work is MAR's at the same num_iter (GtR's tables give +Halton the speedup of +Step)"

    def __init__(self, conf: HaltonSamplerConf) -> None:
        super().__init__(conf)
        self.conf: HaltonSamplerConf = conf

    def schedule(self, seq_len: int) -> list[int]:
        if self.conf.schedule == "arccos":
            return arccos_schedule(seq_len, self.conf.num_iter)
        return mask_schedule(seq_len, self.conf.num_iter)

    def token_orders(
        self, random: RandomSource, batch: int, seq_len: int, device: torch.device
    ) -> torch.Tensor:
        side = math.isqrt(seq_len)
        if side * side != seq_len:
            raise ValueError(f"the Halton order needs a square token grid, got {seq_len} tokens")
        reveal = torch.tensor(halton_cells(side))
        shifts = random.offsets(batch, seq_len) if self.conf.randomize else [0] * batch
        # MAR predicts the last entries of an order first, so the reveal list is reversed
        return torch.stack([reveal.roll(-shift).flip(0) for shift in shifts]).to(device)
