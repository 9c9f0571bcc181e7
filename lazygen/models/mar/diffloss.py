"""MAR's per-token diffusion head: the ``SimpleMLPAdaLN`` denoiser and its sampling wrapper.

Key names follow the official checkpoints (``diffloss.net.*``): Sequential indices such as ``mlp.0``,
``mlp.2`` and ``adaLN_modulation.1`` are kept so ``load_state_dict`` works strictly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import TRAIN_TIMESTEPS, NoiseFn
from lazygen.models.compiling import compile_part
from lazygen.models.mar.transformer import LAYER_NORM_EPS

TIMESTEP_FREQ_DIM = 256
MAX_PERIOD = 10000

Modulation = tuple[torch.Tensor, ...]  # an adaLN layer's (shift, scale[, gate]) for some rows


def timestep_embedding(t: torch.Tensor, dim: int = TIMESTEP_FREQ_DIM) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, cos half first then sin half (fp32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIMESTEP_FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t))


class ResBlock(nn.Module):
    """adaLN residual MLP block: modulation chunks are (shift, scale, gate)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def modulation(self, y: torch.Tensor) -> Modulation:
        """(shift, scale, gate) from the adaLN input y."""
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return shift, scale, gate

    def branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The residual branch before gating: mlp(modulate(LN(x))). Caches may reuse it across steps."""
        return self.mlp(modulate(self.in_ln(x), shift, scale))

    def apply(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        """The block given its modulation: x + gate * branch."""
        return x + gate * self.branch(x, shift, scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.apply(x, *self.modulation(y))


class FinalLayer(nn.Module):
    """Non-affine LayerNorm, adaLN (shift, scale), then the output projection."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=LAYER_NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def modulation(self, y: torch.Tensor) -> Modulation:
        """(shift, scale) from the adaLN input y."""
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return shift, scale

    def apply(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(modulate(self.norm_final(x), shift, scale))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.apply(x, *self.modulation(y))


# Runs one residual block of the denoiser in a policy's way: (index, block, hidden, modulation) -> hidden,
# where ``modulation()`` gives the block's (shift, scale, gate) for these rows. It is a call so that a
# policy that skips a block never pays for its modulation.
HeadBlockFn = Callable[[int, "ResBlock", torch.Tensor, Callable[[], Modulation]], torch.Tensor]


class SimpleMLPAdaLN(nn.Module):
    """Denoiser eps(x_t, t, z): outputs ``2 * in_channels`` (eps and learned-variance values)."""

    def __init__(self, in_channels: int, width: int, cond_channels: int, depth: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)

        self.step = self.run_step  # what HeadChain calls per diffusion step; ``compile_step`` swaps it

    def run_step(self, x: torch.Tensor, mods: list[Modulation], repeat: int = 1) -> torch.Tensor:
        """The per-step part of the denoiser, given every layer's modulation for these rows (the blocks',
        then the final layer's): x (R, C) is projected once and repeated for the CFG halves."""
        h = self.input_proj(x)
        if repeat > 1:
            h = h.repeat(repeat, 1)
        for block, mod in zip(self.res_blocks, mods, strict=False):
            h = block.apply(h, *mod)
        return self.final_layer.apply(h, *mods[-1])

    def compile_step(self, mode: str) -> None:
        """Compile the per-step part (see :mod:`lazygen.models.compiling`)."""
        self.step = compile_part(self.run_step, mode)

    def conditioning(self, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The adaLN input y = time_embed(t) + cond_embed(c), shared by all blocks."""
        return self.time_embed(t) + self.cond_embed(c)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                block_fn: HeadBlockFn | None = None) -> torch.Tensor:  # fmt: skip
        """eps and variance values (R, 2C); ``block_fn(j, block, h, y)``, when given, runs block j in place
        of ``block(h, y)`` (cache policies reuse parts of it across diffusion steps)."""
        y = self.conditioning(t, c)
        h = self.input_proj(x)
        for j, block in enumerate(self.res_blocks):
            h = block(h, y) if block_fn is None else block_fn(j, block, h, lambda b=block: b.modulation(y))
        return self.final_layer(h, y)


# Rows (chain rows x diffusion steps) of one adaLN matrix multiply in a chain: enough that it runs at
# matrix-multiply speed instead of at the speed of streaming the weights once per step, few enough to bound
# the memory it holds (80 MB at MAR-B's width).
MODULATION_CHUNK_ROWS = 1024

# (step index k, block index j) -> how many leading rows of z need block j's modulation at step k; the
# final layer is block ``depth``. 0: the block is not run at that step (a cache serves it).
ModulationNeeds = Callable[[int, int], int]


def _thread_invariant(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x) on one CPU thread: for a handful of rows (the chain's timesteps) a multi-threaded CPU matrix
    multiply may split its sums differently with the thread count, and samples must not depend on it (a
    DDP rank runs fewer threads than a single process). Costs nothing: the rows are few."""
    if x.device.type != "cpu" or torch.get_num_threads() == 1:
        return fn(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(x)
    finally:
        torch.set_num_threads(threads)


class HeadChain:
    """The denoiser prepared for one diffusion chain over fixed conditions z (R, D).

    Along a chain only the token x changes, so what does not depend on it is computed once, not at every
    step: ``cond_embed(z)`` once per chain, ``time_embed(t)`` once per timestep (one row, shared by every
    row), and the adaLN modulations of every block, which depend on (t, z) alone, for a chunk of steps in
    one matrix multiply per block. Only the input projection, the blocks' MLP branches and the final linear
    run per step. The numbers are those of ``SimpleMLPAdaLN.forward`` (same ops, other batching).
    """

    def __init__(self, net: SimpleMLPAdaLN, z: torch.Tensor, timesteps: list[int],
                 needs: ModulationNeeds | None = None) -> None:  # fmt: skip
        self.net = net
        self.rows = z.shape[0]
        self.cond = net.cond_embed(z)  # (R, W)
        self.time = _thread_invariant(net.time_embed, torch.tensor(timesteps, device=z.device))  # (T, W)
        self.needs = needs
        self.chunk_steps = max(1, MODULATION_CHUNK_ROWS // max(self.rows, 1))
        self.layers: list[nn.Module] = [*net.res_blocks, net.final_layer]
        self._chunk: tuple[int, int] | None = None  # (lo, hi) steps of the held modulations
        self._mods: dict[tuple[int, int], torch.Tensor] = {}  # (j, k) -> (rows, m * W)

    def _rows_needed(self, k: int, j: int) -> int:
        return self.rows if self.needs is None else self.needs(k, j)

    def _fill(self, k: int) -> None:
        """Modulations of every layer for the chunk of steps holding k (chains run k = T-1 down to 0)."""
        last = self.time.shape[0] - 1
        hi = last - (last - k) // self.chunk_steps * self.chunk_steps
        lo = max(0, hi - self.chunk_steps + 1)
        self._chunk, self._mods = (lo, hi), {}
        steps = range(hi, lo - 1, -1)
        inputs: dict[tuple, torch.Tensor] = {}  # the adaLN input y of each distinct (step, rows) list
        for j, layer in enumerate(self.layers):
            wanted = tuple((s, n) for s in steps if (n := self._rows_needed(s, j)) > 0)
            if not wanted:
                continue
            if wanted not in inputs:
                inputs[wanted] = self._adaln_input(wanted)
            out = layer.adaLN_modulation(inputs[wanted])
            start = 0
            for s, n in wanted:
                self._mods[(j, s)] = out[start : start + n]
                start += n

    def _adaln_input(self, wanted: tuple[tuple[int, int], ...]) -> torch.Tensor:
        """y = time_embed(t_s) + cond_embed(z) for the first n rows at each (step s, n), stacked."""
        if all(n == self.rows for _, n in wanted):  # one broadcast add: (S, R, W)
            index = torch.tensor([s for s, _ in wanted], device=self.time.device)
            return (self.time.index_select(0, index).unsqueeze(1) + self.cond).flatten(0, 1)
        return torch.cat([self.time[s : s + 1] + self.cond[:n] for s, n in wanted])

    def modulation(self, j: int, k: int, rows: int) -> Modulation:
        """Layer j's modulation at step k for the first ``rows`` rows of z."""
        if self._chunk is None or not self._chunk[0] <= k <= self._chunk[1]:
            self._fill(k)
        mod = self._mods[(j, k)][:rows]
        return mod.chunk(3 if j < len(self.layers) - 1 else 2, dim=-1)

    def __call__(
        self, x: torch.Tensor, k: int, repeat: int = 1, block_fn: HeadBlockFn | None = None
    ) -> torch.Tensor:
        """eps and variance values at step k for tokens x, with z's first ``repeat * len(x)`` rows; x is
        projected once and repeated (the CFG halves share their token)."""
        rows = x.shape[0] * repeat
        if block_fn is None:
            mods = [self.modulation(j, k, rows) for j in range(len(self.layers))]
            return self.net.step(x, mods, repeat)
        h = self.net.input_proj(x)
        if repeat > 1:
            h = h.repeat(repeat, 1)
        for j, block in enumerate(self.net.res_blocks):
            h = block_fn(j, block, h, lambda j=j: self.modulation(j, k, rows))
        return self.net.final_layer.apply(h, *self.modulation(len(self.layers) - 1, k, rows))


def guided_eps_output(out: torch.Tensor, in_channels: int, cfg: float | torch.Tensor) -> torch.Tensor:
    """Mix the eps of [cond; uncond] output rows; keep the conditional rows' variance values.

    ``out`` is (2R, 2C) for the rows [cond; uncond]; the result is (R, 2C) for the conditional chain.
    """
    rows = out.shape[0] // 2
    cond_eps, uncond_eps = out[:rows, :in_channels], out[rows:, :in_channels]
    eps = uncond_eps + cfg * (cond_eps - uncond_eps)
    return torch.cat([eps, out[:rows, in_channels:]], dim=1)


class DiffLoss(nn.Module):
    """Holds the denoiser ``net`` and the respaced diffusion used to sample tokens from conditions."""

    def __init__(
        self, target_channels: int, z_channels: int, width: int, depth: int, num_sampling_steps: str | int
    ) -> None:
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)
        self.gen_diffusion = SpacedDiffusion(num_sampling_steps)
        self.train_diffusion = SpacedDiffusion(TRAIN_TIMESTEPS)

    def loss(
        self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean training loss of tokens ``target`` (R, C) given conditions ``z`` (R, D).

        Each row gets a uniform timestep of the full training chain and fresh noise from ``generator``.
        """
        diffusion = self.train_diffusion
        k = torch.randint(0, diffusion.num_timesteps, (target.shape[0],), generator=generator)
        noise = torch.randn(target.shape, generator=generator)
        k, noise = k.to(target.device), noise.to(target.device, target.dtype)
        return diffusion.training_loss(lambda x, t: self.net(x, t, z), target, k, noise).mean()

    def sample(
        self,
        z: torch.Tensor,
        x_init: torch.Tensor,
        noise_fn: NoiseFn,
        temperature: float = 1.0,
        cfg: float | torch.Tensor | None = None,
        diffusion: SpacedDiffusion | None = None,
    ) -> torch.Tensor:
        """Sample tokens for conditions z.

        Without CFG, z is (R, D) and x_init (R, C). With CFG, z is (2R, D) = [cond; uncond] and x_init
        (R, C): only the conditional chain is run (the official code also carries an unconditional chain,
        but its result is discarded and never feeds back). ``diffusion`` overrides the number of steps.
        """
        diffusion = diffusion or self.gen_diffusion
        head = HeadChain(self.net, z, diffusion.timestep_map)
        x = x_init
        for k in reversed(range(diffusion.num_timesteps)):
            if cfg is None:
                denoise = lambda x, t, k=k: head(x, k)  # noqa: E731
            else:
                denoise = lambda x, t, k=k: guided_eps_output(head(x, k, repeat=2), self.in_channels, cfg)  # noqa: E731
            x = diffusion.p_sample(denoise, x, k, noise_fn(k, x), temperature)
        return x
