"""``sampler=synthetic``: the synthetic model's sampler, one seeded draw per image (see
:mod:`lazygen.models.synthetic`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lazygen.models.synthetic import RGB, SyntheticModel
from lazygen.registry import register


@dataclass
class SyntheticSamplerConf:
    name: str = "synthetic"
    num_iter: int = 1
    cfg: float = 1.0
    rng: str = "per_sample"

    def baseline(self, num_iter: int) -> SyntheticSamplerConf:
        return self


@register("sampler", "synthetic", schema=SyntheticSamplerConf, families=("synthetic",))
class SyntheticSampler:
    """One seeded draw per image: a coarse uniform grid in [-1, 1] (the decoder upsamples it)."""

    name = "synthetic"

    def __init__(self, conf: SyntheticSamplerConf) -> None:
        self.conf = conf

    def sample(
        self, model: SyntheticModel, labels: torch.Tensor, seeds: Sequence[int], policy
    ) -> torch.Tensor:
        device = model.anchor.device
        coarse = torch.stack([
            torch.rand(RGB, model.coarse, model.coarse, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ])  # fmt: skip
        return (coarse * 2 - 1).to(device)
