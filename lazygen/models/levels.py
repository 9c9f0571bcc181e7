"""A tokenizer without a network for discrete-token models: one token per pixel, its intensity level.

tiny_llamagen models 16x16 digits as a raster sequence of 256 tokens, each one of ``levels`` evenly spaced
intensities in [-1, 1]: a vocabulary small enough to learn on a CPU, with LlamaGen's raster geometry.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RGB = 3


class LevelTokenizer(nn.Module):
    """Token ids (B, L) <-> grey images in [-1, 1] (B, 3, S, S), S = sqrt(L); level k is -1 + 2k/(levels-1)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def decode_tokens_latent(self, ids: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(ids.shape[1])
        image = ids.float().reshape(-1, 1, side, side) * (2 / (self.levels - 1)) - 1
        return image.expand(-1, RGB, -1, -1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 1, S, S) -> the nearest level's id, raster order (B, S*S)."""
        ids = ((images.clamp(-1, 1) + 1) * ((self.levels - 1) / 2)).round().long()
        return ids.flatten(1)
