"""A tokenizer without a network: one token per pixel, intensities divided by a scale.

Used by the tiny models that lazygen trains on 16x16 digits: a 16x16 image is a 256-token grid, the same
geometry as MAR's ImageNet latents, so schedules tuned for 256 tokens apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

RGB = 3


class PixelTokenizer(nn.Module):
    """Tokens (B, C, H, W) = (image - latent_shift) * latent_scale <-> images in [-1, 1] (grey when C = 1).

    Shift and scale bring the tokens to about zero mean and unit variance, as MAR's diffusion head expects.
    """

    def __init__(self, latent_scale: float, latent_shift: float = 0.0) -> None:
        super().__init__()
        self.latent_scale = latent_scale
        self.latent_shift = latent_shift

    @property
    def token_range(self) -> tuple[float, float]:
        """Tokens of images in [-1, 1] lie in this interval."""
        return ((-1 - self.latent_shift) * self.latent_scale, (1 - self.latent_shift) * self.latent_scale)

    def decode_tokens_latent(self, latent: torch.Tensor) -> torch.Tensor:
        image = (latent / self.latent_scale + self.latent_shift).clamp(-1, 1)
        return image.expand(-1, RGB, -1, -1) if image.shape[1] == 1 else image

    def encode_to_latent(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> tokens (deterministic: ``generator`` and ``sample`` are the KL
        autoencoder's)."""
        return (images - self.latent_shift) * self.latent_scale
