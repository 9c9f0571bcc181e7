"""A tokenizer without a network: one token per pixel, intensities divided by a scale.

Used by the tiny models that lazygen trains on 16x16 digits: a 16x16 image is a 256-token grid, the same
geometry as MAR's ImageNet latents, so schedules tuned for 256 tokens apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

RGB = 3


class PixelTokenizer(nn.Module):
    """Latent (B, C, H, W) in units of ``1 / latent_scale`` <-> images in [-1, 1] (grey when C = 1)."""

    def __init__(self, latent_scale: float) -> None:
        super().__init__()
        self.latent_scale = latent_scale

    def decode_tokens_latent(self, latent: torch.Tensor) -> torch.Tensor:
        image = (latent / self.latent_scale).clamp(-1, 1)
        return image.expand(-1, RGB, -1, -1) if image.shape[1] == 1 else image

    def encode_to_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> scaled latent tokens."""
        return images * self.latent_scale
