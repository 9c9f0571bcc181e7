"""Within-class diversity: do the samples of one class vary as much as real images of that class?

A generator can reach a high class accuracy by drawing one prototype per class; FID at small N notices
that late. The mean pairwise distance between images of the same class, against the same for real
images, makes the collapse visible: near 1 means real variety, near 0 a single shape per class.
"""

from __future__ import annotations

import numpy as np
import torch

PIXEL_MAX = 255.0


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of images (N, ...) as vectors; needs N >= 2."""
    flat = images.reshape(images.shape[0], -1).to(torch.float64)
    if flat.shape[0] < 2:
        raise ValueError(f"mean_pairwise_distance needs at least 2 images, got {flat.shape[0]}")
    dist = torch.cdist(flat, flat)
    n = flat.shape[0]
    return float(dist.sum() / (n * (n - 1)))


def per_class_diversity(vectors: torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[int, float]:
    """Per class with at least two members: the mean pairwise Euclidean distance of its rows (N, ...)."""
    y = torch.as_tensor(np.asarray(labels))
    return {
        int(c): mean_pairwise_distance(vectors[y == c])
        for c in torch.unique(y).tolist()
        if int((y == c).sum()) >= 2
    }


def class_diversity(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[int, float]:
    """Per class with at least two images: the mean pairwise distance of its images in [0, 1] pixels.

    ``images`` are uint8 (N, H, W, C) or (N, C, H, W); only distances matter, so the layout is free.
    """
    return per_class_diversity(torch.as_tensor(np.asarray(images)).to(torch.float64) / PIXEL_MAX, labels)


def feature_class_diversity(
    extractor: torch.nn.Module, images: torch.Tensor, labels: np.ndarray | torch.Tensor, batch: int = 256
) -> dict[int, float]:
    """Per class: the mean pairwise distance of the evaluator's features of uint8 images (N, 3, H, W).

    Pixel distance counts stroke noise as variety; the evaluator's features, trained to tell digits
    apart, change with shape far more than with speckle, so this version sees whether the shapes vary.
    """
    with torch.no_grad():
        feats = torch.cat([extractor(images[i : i + batch])[0] for i in range(0, len(images), batch)])
    return per_class_diversity(feats.to(torch.float64), labels)


def diversity_ratio(generated: dict[int, float], real: dict[int, float]) -> dict[int, float]:
    """Generated over real within-class diversity, for the classes both have."""
    return {c: generated[c] / real[c] for c in generated if c in real and real[c] > 0}
