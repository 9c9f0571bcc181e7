"""A fixed random feature extractor, so FID/IS run end to end without InceptionV3 weights."""

from __future__ import annotations

import torch
from torch import nn

from lazygen.metrics.quality import ExtractorOutput

FEATURES, CLASSES, SIDE = 8, 4, 8


class ToyExtractor(nn.Module):
    num_features = FEATURES

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * SIDE * SIDE, FEATURES, generator=g)
        self.head = torch.randn(FEATURES, CLASSES, generator=g)

    def forward(self, images: torch.Tensor) -> ExtractorOutput:
        x = nn.functional.interpolate(images.float() / 255, size=(SIDE, SIDE), mode="area").flatten(1)
        features = x @ self.proj
        return ExtractorOutput(features, features @ self.head)


def make() -> ToyExtractor:
    return ToyExtractor()
