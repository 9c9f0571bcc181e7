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


def class_diversity(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[int, float]:
    """Per class with at least two images: the mean pairwise distance of its images in [0, 1] pixels.

    ``images`` are uint8 (N, H, W, C) or (N, C, H, W); only distances matter, so the layout is free.
    """
    x = torch.as_tensor(np.asarray(images)).to(torch.float64) / PIXEL_MAX
    y = torch.as_tensor(np.asarray(labels))
    return {
        int(c): mean_pairwise_distance(x[y == c])
        for c in torch.unique(y).tolist()
        if int((y == c).sum()) >= 2
    }


def diversity_ratio(generated: dict[int, float], real: dict[int, float]) -> dict[int, float]:
    """Generated over real within-class diversity, for the classes both have."""
    return {c: generated[c] / real[c] for c in generated if c in real and real[c] > 0}
