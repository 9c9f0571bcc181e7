"""Random-number protocols for samplers.

``official`` consumes the global numpy and torch streams exactly as the official MAR code does, so seeded
runs reproduce its samples. ``per_sample`` gives every sample its own generator, seeded from the sample's
seed, so an image depends only on its seed: not on the batch size, the world size or its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lazygen.diffusion.gaussian import NoiseFn

RNG_PROTOCOLS = ("official", "per_sample")


class RandomSource:
    """Token orders and diffusion noise for one batch."""

    def orders(self, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def offsets(self, batch: int, high: int) -> list[int]:
        """One uniform integer in [0, high) per image (e.g. a random roll of a fixed order)."""
        raise NotImplementedError

    def initial_noise(self, per_image: int, channels: int, device: torch.device) -> torch.Tensor:
        """Start of the diffusion chain for ``per_image`` rows of every image, image-major: (B*n, C)."""
        raise NotImplementedError

    def step_noise(self, per_image: int, channels: int, num_steps: int, cfg_on: bool) -> NoiseFn:
        """Noise for each diffusion step of the chain started by ``initial_noise``."""
        raise NotImplementedError


class OfficialRandom(RandomSource):
    """Global streams: numpy shuffles the orders, torch's CPU generator the initial noise, and the
    device's default generator the per-step noise (drawn for both CFG halves, as the official code)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def orders(self, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
        rows = []
        for _ in range(batch):
            order = np.arange(seq_len)
            np.random.shuffle(order)
            rows.append(order)
        return torch.from_numpy(np.stack(rows)).long().to(device)

    def offsets(self, batch: int, high: int) -> list[int]:
        return [int(np.random.randint(high)) for _ in range(batch)]

    def initial_noise(self, per_image: int, channels: int, device: torch.device) -> torch.Tensor:
        return torch.randn(self.batch * per_image, channels).to(device)

    def step_noise(self, per_image: int, channels: int, num_steps: int, cfg_on: bool) -> NoiseFn:
        halves = 2 if cfg_on else 1

        def noise(k: int, like: torch.Tensor) -> torch.Tensor:
            drawn = torch.randn(halves * like.shape[0], channels, device=like.device, dtype=like.dtype)
            return drawn[: like.shape[0]]

        return noise


class PerSampleRandom(RandomSource):
    """One CPU generator per sample; draws are moved to the device, so results match across devices."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def orders(self, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.stack([torch.randperm(seq_len, generator=g) for g in self.generators]).to(device)

    def offsets(self, batch: int, high: int) -> list[int]:
        return [int(torch.randint(high, (1,), generator=g)) for g in self.generators]

    def _draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """One draw of ``shape`` from every sample's generator, stacked: (B, *shape)."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(device)

    def initial_noise(self, per_image: int, channels: int, device: torch.device) -> torch.Tensor:
        return self._draw((per_image, channels), device).reshape(-1, channels)

    def step_noise(self, per_image: int, channels: int, num_steps: int, cfg_on: bool) -> NoiseFn:
        drawn: dict[str, torch.Tensor] = {}

        def noise(k: int, like: torch.Tensor) -> torch.Tensor:
            # all steps of this chain are drawn at once on first use: one call per sample, not per step
            if "all" not in drawn:
                per = self._draw((num_steps, per_image, channels), like.device)  # (B, T, n, C)
                drawn["all"] = per.permute(1, 0, 2, 3).reshape(num_steps, -1, channels).to(like.dtype)
            return drawn["all"][k]

        return noise


def make_random_source(protocol: str, seeds: Sequence[int]) -> RandomSource:
    if protocol == "official":
        return OfficialRandom(len(seeds))
    if protocol == "per_sample":
        return PerSampleRandom(seeds)
    raise ValueError(f"unknown rng protocol {protocol!r}; choose one of {RNG_PROTOCOLS}")
