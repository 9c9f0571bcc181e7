"""``GenerationModule``: the quality extractor reads the generated images on its own device."""

from __future__ import annotations

import torch
from torch import nn

from lazygen.bench import generator_for
from lazygen.lit.generation import GenerationModule

FEATURES = 4


class DeviceRecorder(nn.Module):
    """An extractor whose weights live on ``device``; it records where its input was."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=device))
        self.seen: list[torch.device] = []

    def forward(self, images: torch.Tensor):
        self.seen.append(images.device)
        return torch.zeros(len(images), FEATURES), torch.zeros(len(images), FEATURES)


def test_extractor_reads_host_images_on_its_own_device() -> None:
    """tiny_llamagen's token grid comes back in host memory and its tokenizer has no weights, so its images
    are on the CPU even when the extractor is on a GPU (it failed on CUDA with a device mismatch). The meta
    device stands in for the GPU here."""
    gen = generator_for("tiny_llamagen", None, None, "cpu")
    extractor = DeviceRecorder("meta")
    module = GenerationModule(gen, extractor)
    batch = {"label": torch.tensor([3, 7]), "seed": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}
    out = module.predict_step(batch, 0)
    assert extractor.seen == [torch.device("meta")]
    assert out["images"].shape[0] == 2 and out["features"].shape == (2, FEATURES)
