"""Shared test fixtures: where the official-code parity fixtures live, and a quiet W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared/fixtures beside the checkout, or where LAZYGEN_FIXTURES points (e.g. a copy on a GPU machine)
FIXTURES = Path(os.environ.get("LAZYGEN_FIXTURES", REPO.parent / "shared" / "fixtures"))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("LAZYGEN_TEST_DEVICE", "cpu"),
        help="device the parity tests compute on (cpu | cuda); the fixtures' random draws were made on the CPU",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """Where the parity tests run. On CUDA the exact fp32 path is held to the CPU tolerances, so TF32 (which
    cuDNN's convolutions use by default) is switched off, as ``hardware.precision=32-true`` does."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda was asked for, but torch sees no CUDA device")
        from lazygen.lit.generation import exact_fp32

        exact_fp32(dev)
    return dev


@pytest.fixture
def cpu_draws(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official code draws each diffusion step's noise and each next token from the *device's* global
    generator, and the fixtures were made on the CPU. Off the CPU, draw those from the CPU's global stream
    (in the same order, then moved), so the samples compare the device's arithmetic, not its generator."""
    if device.type == "cpu":
        return
    from lazygen.samplers import rng

    def step_noise(self, per_image: int, channels: int, num_steps: int, cfg_on: bool):
        halves = 2 if cfg_on else 1

        def noise(k: int, like: torch.Tensor) -> torch.Tensor:
            drawn = torch.randn(halves * like.shape[0], channels, dtype=like.dtype)
            return drawn[: like.shape[0]].to(like.device)

        return noise

    multinomial = torch.multinomial
    monkeypatch.setattr(rng.OfficialRandom, "step_noise", step_noise)
    monkeypatch.setattr(torch, "multinomial", lambda p, *a, **k: multinomial(p.cpu(), *a, **k).to(p.device))


def to_device(value, device: torch.device):
    """``value`` (a tensor, or a dict/list/tuple holding tensors) with every tensor moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def load_fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"parity fixture {path} is not present (it lives in ../shared/fixtures)")
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="session")
def mar_fixture() -> dict:
    return load_fixture("mar_official_tiny.pt")


@pytest.fixture(scope="session")
def lazymar_fixture() -> dict:
    return load_fixture("lazymar_official_tiny.pt")
