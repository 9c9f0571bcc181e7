"""Controlled damage to real images, to check that a quality metric ranks worse images as worse.

An evaluator fit to judge an acceleration must give a worse FID to damaged real digits than to clean ones,
and a monotonically worse FID as the damage grows. Each damage takes images in [-1, 1] (N, C, H, W) and a
seeded generator, and returns images of the same shape and range.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

NOISE_LEVELS = (0.1, 0.2, 0.4)  # std of additive Gaussian noise, in units of the [-1, 1] image range
BLUR_SIGMA = 1.0  # Gaussian blur std in pixels
BLUR_RADIUS = 2  # kernel half-width (5x5 kernel)
SHUFFLE_CELL = 2  # pixels are permuted within cells of this side

Damage = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of the given std, clipped back to [-1, 1]."""
    noise = torch.randn(images.shape, generator=generator) * std
    return (images + noise.to(images.device)).clamp(-1, 1)


def gaussian_blur(images: torch.Tensor, sigma: float = BLUR_SIGMA, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """Separable Gaussian blur per channel, with reflected borders."""
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def shuffle_cells(images: torch.Tensor, generator: torch.Generator, cell: int = SHUFFLE_CELL) -> torch.Tensor:
    """Permute the pixels within each ``cell`` x ``cell`` block, a fresh permutation per block and image.

    Local intensity is kept (every cell keeps its pixel values); only the fine structure is destroyed.
    """
    n, c, h, w = images.shape
    if h % cell or w % cell:
        raise ValueError(f"shuffle_cells needs sides divisible by {cell}, got {h}x{w}")
    blocks = images.reshape(n, c, h // cell, cell, w // cell, cell).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(n, h // cell, w // cell, c, cell * cell)
    order = torch.rand((n, h // cell, w // cell, 1, cell * cell), generator=generator).argsort(dim=-1)
    shuffled = blocks.gather(-1, order.to(images.device).expand_as(blocks))
    shuffled = shuffled.reshape(n, h // cell, w // cell, c, cell, cell).permute(0, 3, 1, 4, 2, 5)
    return shuffled.reshape(n, c, h, w)


def damages() -> dict[str, Damage]:
    """The named damages of the evaluator check, mildest noise first."""
    out: dict[str, Damage] = {
        f"noise {std}": (lambda x, g, s=std: add_noise(x, s, g)) for std in NOISE_LEVELS
    }
    out[f"blur sigma {BLUR_SIGMA}"] = lambda x, g: gaussian_blur(x)
    out[f"shuffle {SHUFFLE_CELL}x{SHUFFLE_CELL}"] = lambda x, g: shuffle_cells(x, g)
    return out
