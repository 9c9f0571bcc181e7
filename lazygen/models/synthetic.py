"""``model=synthetic``: seeded random images with no network, to test and time the pipeline itself.

Every image depends only on its sample seed (``rng=per_sample``), so sharding, resuming and batching can
be checked at any scale, and a run's time is the framework's own: writing, reading back, metrics. The
images are smooth random blobs (a coarse random grid upsampled bilinearly) so their PNGs stay small, like a
generator's, rather than incompressible noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

RGB = 3


@dataclass
class SyntheticEvaluatorConf:
    extractor: str = "inception"  # no bundled evaluator: quality metrics stay off unless asked for
    reference_stats: str | None = None


@dataclass
class SyntheticModelConf:
    """``family: synthetic``."""

    name: str = "synthetic"
    family: str = "synthetic"
    init: str = "random"  # there are no weights
    init_seed: int = 0
    image_size: int = 256
    coarse: int = 8  # side of the random grid each image is upsampled from
    classes: int = 1000
    default_cfg: float = 1.0
    default_num_iter: int = 1
    evaluator: SyntheticEvaluatorConf = field(default_factory=SyntheticEvaluatorConf)

    @property
    def num_classes(self) -> int:
        return self.classes


class SyntheticModel(nn.Module):
    """Holds the image geometry; its one buffer gives the run a device."""

    def __init__(self, conf: SyntheticModelConf) -> None:
        super().__init__()
        self.coarse = conf.coarse
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)


class SyntheticDecoder(nn.Module):
    """The coarse grid in [-1, 1] upsampled bilinearly to the image size (so latents stay small on disk)."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size

    def decode_tokens_latent(self, coarse: torch.Tensor) -> torch.Tensor:
        return F.interpolate(coarse, size=self.image_size, mode="bilinear", align_corners=False)
