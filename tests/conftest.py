"""Shared test fixtures: where the official-code parity fixtures live, and a quiet W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
