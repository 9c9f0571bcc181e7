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
from lazygen.models.mar.transformer import LAYER_NORM_EPS

TIMESTEP_FREQ_DIM = 256
MAX_PERIOD = 10000


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

    def modulation(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift, scale, gate) from the adaLN input y."""
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return shift, scale, gate

    def branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The residual branch before gating: mlp(modulate(LN(x))). Caches may reuse it across steps."""
        return self.mlp(modulate(self.in_ln(x), shift, scale))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(y)
        return x + gate * self.branch(x, shift, scale)


class FinalLayer(nn.Module):
    """Non-affine LayerNorm, adaLN (shift, scale), then the output projection."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=LAYER_NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# Runs one residual block of the denoiser in a policy's way: (index, block, hidden, adaLN input) -> hidden.
HeadBlockFn = Callable[[int, "ResBlock", torch.Tensor, torch.Tensor], torch.Tensor]


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
            h = block(h, y) if block_fn is None else block_fn(j, block, h, y)
        return self.final_layer(h, y)


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
        if cfg is None:
            return diffusion.p_sample_loop(lambda x, t: self.net(x, t, z), x_init, noise_fn, temperature)

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self.net(torch.cat([x, x]), torch.cat([t, t]), z)
            return guided_eps_output(out, self.in_channels, cfg)

        return diffusion.p_sample_loop(guided, x_init, noise_fn, temperature)
