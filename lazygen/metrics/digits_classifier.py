"""The digits16 evaluator: a small CNN trained by lazygen on real digits, standing in for InceptionV3.

Its penultimate features (``num_features``-d) feed FID, its logits feed IS and the class accuracy of
generated images. It takes the same uint8 (N, 3, H, W) images as InceptionV3, so the quality meter treats
both alike; grey is read from the first channel and images of another size are resized to 16x16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lazygen.metrics.quality import ExtractorOutput

DIGITS_SIZE = 16
DIGITS_CLASSES = 10
FEATURES = 64
CHANNELS = (32, 64)
PIXEL_MAX = 255.0


class DigitsClassifier(nn.Module):
    """conv-conv-pool, conv-pool, then a ``FEATURES``-wide hidden layer and the class logits."""

    num_features = FEATURES
    num_classes = DIGITS_CLASSES

    def __init__(self) -> None:
        super().__init__()
        c1, c2 = CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (DIGITS_SIZE // 4) ** 2, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, DIGITS_CLASSES)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Grey images in [-1, 1] (N, 1, 16, 16) -> features (N, FEATURES)."""
        return self.features(images)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))

    @staticmethod
    def from_uint8(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> grey float (N, 1, 16, 16) in [-1, 1]."""
        x = images[:, :1].float() / PIXEL_MAX * 2 - 1
        if x.shape[-1] != DIGITS_SIZE or x.shape[-2] != DIGITS_SIZE:
            x = F.interpolate(x, size=DIGITS_SIZE, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: torch.Tensor) -> ExtractorOutput:
        features = self.embed(self.from_uint8(images))
        return ExtractorOutput(features, self.head(features))


def load_digits16_evaluator(home=None) -> DigitsClassifier:
    """The shipped, trained evaluator (see ``lazygen/assets/digits16_evaluator.json``), in eval mode."""
    from lazygen.weights import load_strict, read_state_dict, resolve_weight

    path = resolve_weight("digits16_evaluator", home=home, config_key="metrics.quality.extractor")
    net = DigitsClassifier()
    load_strict(net, read_state_dict(path), source=str(path))
    return net.eval()
