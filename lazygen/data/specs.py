"""Sample specs: what to generate, independent of how the work is split.

A spec is ``(index, label, seed)``. The seed is derived from the run seed and the global index only, so
an image is the same whatever the batch size, the number of processes or which samples already exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

SEED_BITS = 63


@dataclass(frozen=True)
class SampleSpec:
    index: int
    label: int
    seed: int


def sample_seed(run_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of a run seeded with ``run_seed``."""
    state = np.random.SeedSequence([int(run_seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << SEED_BITS) - 1))


def class_labels(num_images: int, num_classes: int, labels: str | Sequence[int], seed: int) -> list[int]:
    """Labels per index: ``balanced`` gives contiguous equal blocks per class (the 50k protocol: class c
    holds indices c*N/C .. (c+1)*N/C - 1), ``random`` draws uniformly, a list is cycled."""
    if labels == "balanced":
        return [i * num_classes // num_images for i in range(num_images)]
    if labels == "random":
        rng = np.random.default_rng([int(seed), num_classes])
        return [int(c) for c in rng.integers(0, num_classes, size=num_images)]
    chosen = [int(c) for c in labels]
    return [chosen[i % len(chosen)] for i in range(num_images)]


def build_specs(
    num_images: int, num_classes: int, labels: str | Sequence[int], seed: int
) -> list[SampleSpec]:
    return [
        SampleSpec(i, c, sample_seed(seed, i))
        for i, c in enumerate(class_labels(num_images, num_classes, labels, seed))
    ]


class SpecDataset(Dataset):
    """The specs still to generate (finished ones are filtered out by the caller when resuming)."""

    def __init__(self, specs: Sequence[SampleSpec]) -> None:
        self.specs = list(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.specs[i]
        return {"index": torch.tensor(s.index), "label": torch.tensor(s.label), "seed": torch.tensor(s.seed)}
