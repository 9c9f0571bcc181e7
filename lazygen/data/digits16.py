"""``digits16``: scikit-learn's bundled handwritten digits, resized from 8x8 to 16x16.

1797 grey images of 10 classes that ship inside scikit-learn, so a fresh offline machine has them. At
16x16 with one token per pixel an image is a 256-token grid, MAR's ImageNet geometry. The split into a
training and a held-out part is stratified and seeded, so every tool (generator training, evaluator
training, reference statistics, the held-out floor) sees the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lazygen.errors import ConfigError

SOURCE_MAX = 16.0  # sklearn digits hold integer intensities 0..16
NUM_CLASSES = 10
SPLITS = ("train", "heldout", "all")


@dataclass
class DatasetConf:
    """A real image dataset; only ``digits16`` exists so far."""

    name: str = "digits16"
    image_size: int = 16
    heldout_fraction: float = 0.2  # per class, taken by a seeded permutation
    split_seed: int = 0


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "The digits16 dataset is scikit-learn's bundled digits, but scikit-learn is not installed. "
            "Install it with `pip install 'lazygen[train]'` (or `pip install scikit-learn`). Generating "
            "with the shipped tiny models does not need it."
        ) from None
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, held-out) indices: the same fraction of every class is held out."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(
            f"data.heldout_fraction={heldout_fraction} must be strictly between 0 and 1 (0.2 is the default)."
        )
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(len(members) * heldout_fraction))
        heldout.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def load_digits16(conf: DatasetConf | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] as (N, 1, S, S) float32 and labels (N,), for one split."""
    conf = conf or DatasetConf()
    if conf.name != "digits16":
        raise ConfigError(f"data.name={conf.name!r} is not a known dataset; the only one is digits16.")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}.")
    images, labels = _load_sklearn_digits()
    if split != "all":
        train, heldout = split_indices(labels, conf.heldout_fraction, conf.split_seed)
        keep = train if split == "train" else heldout
        images, labels = images[keep], labels[keep]
    x = torch.from_numpy(images).unsqueeze(1) / SOURCE_MAX
    x = F.interpolate(x, size=conf.image_size, mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.from_numpy(labels)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, 1|3, H, W) -> uint8 (N, 3, H, W), rounded as generated images are."""
    x = ((images.float() + 1) / 2 * 255).clamp(0, 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
