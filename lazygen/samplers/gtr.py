"""GtR, generation then reconstruction (reference/gtr_baselines.md §5), on MAR's sampler.

The token grid is split into K stages by hierarchical checkerboard bisection: the reconstruction stage
S_K is the odd cells ((i + j) mod 2 = 1), and the generation half is bisected again into S_{K-1} ... S_1,
so early tokens are spread over the whole image. Stage k takes ``stage_steps[k]`` AR steps (near-equal
counts, smaller first) in a random order inside the stage, per image. Diffusion steps are stage-aware:
linear from ``t_max`` to ``t_min`` over the generation steps, ``t_rec`` on reconstruction steps. Cache
policies are told to refresh at every stage start and on every reconstruction step. FTS
(frequency-weighted token selection) gives the reconstruction tokens whose conditioning vectors carry the
most high-frequency energy ``t_detail`` diffusion steps instead of ``t_rec``. ``order`` swaps the stages'
cells for raster, "subsample" (4-quadrant raster) or random order with the same counts (Table 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lazygen.cache.base import MARPolicy, StepContext
from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import MIN_SAMPLING_STEPS, TRAIN_TIMESTEPS
from lazygen.errors import require, require_one_of
from lazygen.registry import register
from lazygen.samplers.mar import MARSampler, MARSamplerConf
from lazygen.samplers.rng import RandomSource

BISECTIONS = ("diagonal", "lattice")
FTS_SELECTIONS = ("high", "low", "random", "all", "none")  # high = GtR; the rest are its Table 4 ablations
ORDERS = ("gtr", "raster", "random", "subsample")  # gtr = the stages; the rest are its Table 5 ablations


def frequency_scores(z: torch.Tensor) -> torch.Tensor:
    """FTS importance (..., n) of conditioning vectors z (..., n, D): amplitude spectrum over channels,
    bins 1..D/2 weighted linearly from about 1 to 2 (the DC bin left out)."""
    half = z.shape[-1] // 2
    amplitude = torch.fft.rfft(z.float(), dim=-1).abs()[..., 1 : half + 1]
    weights = 1 + torch.arange(1, half + 1, device=z.device, dtype=amplitude.dtype) / half
    return (amplitude * weights).sum(dim=-1)


def in_level(i: int, j: int, level: int, bisection: str) -> bool:
    """Whether cell (i, j) is still unassigned after ``level`` bisections (the set R_level)."""
    if bisection == "diagonal":  # R_k = {(i + j) mod 2^k = 0}: the literal reading of the paper
        return (i + j) % (2**level) == 0
    m, odd = divmod(level, 2)  # lattice: square and quincunx sub-lattices alternate
    on_square = i % (2**m) == 0 and j % (2**m) == 0
    return on_square and (not odd or ((i + j) // (2**m)) % 2 == 0)


def partition(side: int, stages: int, bisection: str) -> list[list[int]]:
    """Flat cell indices of S_1 .. S_K (S_K = the reconstruction half), each ascending."""
    remaining = [(i, j) for i in range(side) for j in range(side)]
    later: list[list[int]] = []
    for level in range(1, stages):
        keep = [c for c in remaining if in_level(*c, level, bisection)]
        later.insert(0, [i * side + j for i, j in remaining if (i, j) not in set(keep)])
        remaining = keep
    return [[i * side + j for i, j in remaining], *later]


def subsample_order(side: int) -> list[int]:
    """GtR's "4-quadrant raster": raster order inside each quadrant, the four quadrants in lockstep."""
    half = side // 2
    corners = [(0, 0), (0, half), (half, 0), (half, half)]
    return [(r + a) * side + (c + b) for r in range(half) for c in range(half) for a, b in corners]


def split_counts(size: int, steps: int) -> list[int]:
    """``size`` tokens over ``steps`` steps: near-equal integers, the smaller counts first."""
    base, extra = divmod(size, steps)
    return [base] * (steps - extra) + [base + 1] * extra


@dataclass
class GtRSamplerConf(MARSamplerConf):
    name: str = "gtr"
    stages: int = 3  # K: K - 1 generation sub-stages, then reconstruction
    bisection: str = "diagonal"  # diagonal ((i + j) mod 2^k, the paper's text) | lattice
    order: str = "gtr"  # which cells the steps reveal (see ORDERS); the counts and diffusion steps stay GtR's
    stage_steps: list[int] = field(default_factory=lambda: [11, 3, 2])  # AR steps per stage; sum = num_iter
    t_max: int = 50  # diffusion steps at the first generation step
    t_min: int = 20  # ... at the last generation step
    t_rec: int = 20  # on reconstruction steps
    fts_select: str = "high"  # which reconstruction tokens get t_detail (see FTS_SELECTIONS)
    fts_fraction: float = 0.1  # share of each reconstruction step's tokens, per image (rounded up)
    t_detail: int = 50


def check_gtr(s: GtRSamplerConf, run) -> None:
    side = run.model.arch.seq_h
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
        require(MIN_SAMPLING_STEPS <= value <= TRAIN_TIMESTEPS,
               f"sampler.{key}={value} must be between {MIN_SAMPLING_STEPS} and {TRAIN_TIMESTEPS}.")  # fmt: skip
    require(s.diffusion_steps is None,
           f"sampler.diffusion_steps={s.diffusion_steps} does not apply to sampler=gtr, whose diffusion steps "
           "are stage-aware (sampler.t_max, t_min, t_rec); leave it null.")  # fmt: skip


@register("sampler", "gtr", schema=GtRSamplerConf, families=("mar",), check=check_gtr)
class GtRSampler(MARSampler):
    name = "gtr"

    def __init__(self, conf: GtRSamplerConf) -> None:
        super().__init__(conf)
        self.conf: GtRSamplerConf = conf
        self._stage_of_step = [k for k, n in enumerate(conf.stage_steps) for _ in range(n)]

    def stages(self, seq_len: int) -> list[list[int]]:
        side = math.isqrt(seq_len)
        if side * side != seq_len:
            raise ValueError(f"GtR needs a square token grid, got {seq_len} tokens")
        return partition(side, self.conf.stages, self.conf.bisection)

    def counts(self, seq_len: int) -> list[int]:
        """New tokens per AR step."""
        sizes = [len(s) for s in self.stages(seq_len)]
        return [
            c for size, n in zip(sizes, self.conf.stage_steps, strict=True) for c in split_counts(size, n)
        ]

    def schedule(self, seq_len: int) -> list[int]:
        remaining, out = seq_len, []
        for count in self.counts(seq_len):
            remaining -= count
            out.append(remaining)
        return out

    def token_orders(
        self, random: RandomSource, batch: int, seq_len: int, device: torch.device
    ) -> torch.Tensor:
        order = self.conf.order
        if order == "random":
            reveal = random.orders(batch, seq_len, device)
        elif order in ("raster", "subsample"):
            side = math.isqrt(seq_len)
            cells = list(range(seq_len)) if order == "raster" else subsample_order(side)
            reveal = torch.tensor(cells, device=device).expand(batch, -1)
        else:
            parts = []
            for cells in self.stages(seq_len):  # a random order inside each stage, per image
                perm = random.orders(batch, len(cells), device)
                parts.append(torch.tensor(cells, device=device)[perm])
            reveal = torch.cat(parts, dim=1)  # (B, L): S_1 first
        return reveal.flip(1)  # MAR predicts the last entries of an order first

    def refresh_at(self, step: int) -> bool:
        stage = self._stage_of_step[step]
        first_of_stage = step == 0 or self._stage_of_step[step - 1] != stage
        return first_of_stage or stage == self.conf.stages - 1

    def diffusion_steps_at(self, step: int) -> int:
        """Stage-aware diffusion steps: linear t_max -> t_min over generation steps, then t_rec."""
        c = self.conf
        generation = sum(c.stage_steps[:-1])
        if step >= generation:
            return c.t_rec
        if generation == 1:
            return c.t_max
        return round(c.t_max - (c.t_max - c.t_min) * step / (generation - 1))

    def step_diffusion(self, model, step: int) -> SpacedDiffusion:
        return self.respaced(model, self.diffusion_steps_at(step))

    def detail_tokens(self, z_cond: torch.Tensor, random: RandomSource) -> torch.Tensor:
        """Per image, the (B, m) ascending indices among a reconstruction step's n tokens that get t_detail."""
        c = self.conf
        batch, n = z_cond.shape[:2]
        m = n if c.fts_select == "all" else 0 if c.fts_select == "none" else math.ceil(c.fts_fraction * n)
        if c.fts_select == "random":
            ranked = random.orders(batch, n, z_cond.device)
        else:
            ranked = frequency_scores(z_cond).argsort(dim=1, descending=c.fts_select != "low", stable=True)
        return ranked[:, :m].sort(dim=1).values

    def head_samples(
        self, model, policy: MARPolicy, z: torch.Tensor, random: RandomSource, cfg, ctx: StepContext
    ) -> torch.Tensor:
        generation = sum(self.conf.stage_steps[:-1])
        if ctx.step < generation:
            return super().head_samples(model, policy, z, random, cfg, ctx)
        batch, n, width = ctx.predicted_now.shape[0], z.shape[1], z.shape[2]
        detail = self.detail_tokens(z[:batch], random)
        m = detail.shape[1]
        if m in (0, n):
            steps = self.conf.t_detail if m else self.conf.t_rec
            return self.run_head(model, policy, z, random, cfg, ctx, self.respaced(model, steps))
        mask = torch.zeros(batch, n, dtype=torch.bool, device=z.device).scatter(1, detail, True)
        rest = mask.to(torch.uint8).argsort(dim=1, stable=True)[
            :, : n - m
        ]  # the others, ascending (meta-safe)
        out = torch.empty(batch, n, model.token_dim, device=z.device, dtype=z.dtype)
        for index, steps in ((detail, self.conf.t_detail), (rest, self.conf.t_rec)):
            rows = index.repeat(z.shape[0] // batch, 1)  # the uncond rows follow their cond rows
            part = z.gather(1, rows.unsqueeze(-1).expand(-1, -1, width))
            sampled = self.run_head(model, policy, part, random, cfg, ctx, self.respaced(model, steps))
            out = out.scatter(
                1,
                index.unsqueeze(-1).expand(-1, -1, out.shape[-1]),
                sampled.reshape(batch, -1, out.shape[-1]),
            )
        return out.flatten(0, 1)
