"""A fixed random feature extractor, so FID/IS run end to end without InceptionV3 weights."""

from __future__ import annotations

import torch
from torch import nn

from lazygen.metrics.quality import ExtractorOutput

FEATURES, CLASSES, SIDE = 8, 4, 8
OTHER_CLASSES = 16  # more than tiny_mar's 10, so its labels are valid indices of these logits


class ToyExtractor(nn.Module):
    num_features = FEATURES

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * SIDE * SIDE, FEATURES, generator=g)
        self.head = torch.randn(FEATURES, classes, generator=g)

    def forward(self, images: torch.Tensor) -> ExtractorOutput:
        x = nn.functional.interpolate(images.float() / 255, size=(SIDE, SIDE), mode="area").flatten(1)
        features = x @ self.proj
        return ExtractorOutput(features, features @ self.head)


def make() -> ToyExtractor:
    return ToyExtractor()


class OtherClassifier(ToyExtractor):
    """A classifier of 16 classes (as InceptionV3's 1008 are not ImageNet's 1000): no class accuracy."""

    num_classes = OTHER_CLASSES

    def __init__(self) -> None:
        super().__init__(OTHER_CLASSES)
