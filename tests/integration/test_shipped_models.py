"""The tiny model and evaluator that lazygen trains and ships: manifests, accuracy, and real samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FAST, cli, compose_cfg
from PIL import Image

from lazygen.data.digits16 import load_digits16, to_uint8_rgb
from lazygen.metrics.digits_classifier import load_digits16_evaluator
from lazygen.run import image_grid, run_job
from lazygen.weights import sha256_of
from lazygen.weights.registry import ASSETS_DIR

MAX_SHIPPED_BYTES = 20 * 1024 * 1024
MANIFEST_KEYS = ("sha256", "command", "commit", "final_loss", "steps")


@pytest.mark.parametrize(
    "name", ["tiny_mar", "tiny_mar_samples", "tiny_kl", "tiny_llamagen", "digits16_evaluator"]
)
def test_shipped_weights_match_their_manifest(name):
    manifest = json.loads((ASSETS_DIR / f"{name}.json").read_text())
    weights = ASSETS_DIR / manifest["file"]
    assert all(manifest.get(k) is not None for k in MANIFEST_KEYS), manifest
    assert manifest["command"].startswith("python -m lazygen.train")
    assert weights.stat().st_size <= MAX_SHIPPED_BYTES
    assert sha256_of(weights) == manifest["sha256"]
    assert manifest["final_loss"] < manifest["first_loss"]


def test_reference_stats_match_the_evaluator_manifest():
    ref = json.loads((ASSETS_DIR / "digits16_evaluator.json").read_text())["reference_stats"]
    assert sha256_of(ASSETS_DIR / ref["file"]) == ref["sha256"]


def test_evaluator_classifies_held_out_digits():
    images, labels = load_digits16(split="heldout")
    with torch.no_grad():
        _, logits = load_digits16_evaluator()(to_uint8_rgb(images))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.97, accuracy


def test_shipped_tiny_mar_draws_digits_of_the_asked_class(tmp_path):
    """10 samples (one per class) at the default 64 steps and cfg: the evaluator agrees with the label."""
    run_dir = tmp_path / "run"
    metrics = run_job(compose_cfg("logger=none", "callbacks.progress_bar=false", "data.num_images=10",
                                  "data.batch_size=10", "metrics.flops.enabled=false"), run_dir)  # fmt: skip
    assert metrics["quality/class_acc"] >= 0.8, metrics
    assert {"quality/fid", "quality/is_mean"} <= metrics.keys()
    grid = np.asarray(Image.open(run_dir / "grid.png"))
    assert grid.shape[0] == 10 * 64 and grid.shape[1] == 64  # one row per class


def test_grid_rows_are_classes():
    images = np.stack([np.full((4, 4, 3), 10 * i, dtype=np.uint8) for i in range(6)])
    grid = image_grid(images, 100, labels=[2, 0, 1, 2, 0, 1])
    assert grid.shape[:2] == (3 * 64, 2 * 64)
    cell = lambda r, c: int(grid[r * 64, c * 64, 0])  # noqa: E731
    assert [cell(0, 0), cell(0, 1), cell(1, 0), cell(2, 0), cell(2, 1)] == [10, 40, 20, 0, 30]
    # a long run sorted by class: the grid still shows every class, the first images of each
    small = image_grid(images, 3, labels=[0, 0, 1, 1, 2, 2])
    assert small.shape[:2] == (3 * 64, 64)
    assert [int(small[r * 64, 0, 0]) for r in range(3)] == [0, 20, 40]


def test_quality_is_skipped_quietly_for_a_tiny_run_and_refused_when_insisted(tmp_path):
    metrics = run_job(compose_cfg(*FAST, "data.num_images=2"), tmp_path / "a")
    assert "quality/class_acc" not in metrics
    proc = cli(*FAST, "data.num_images=2", "metrics.quality.enabled=true", f"hydra.run.dir={tmp_path / 'b'}")
    assert (
        proc.returncode == 2 and "metrics.quality.is_splits" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_generation_with_a_training_dataset_is_a_clear_error():
    proc = cli("data=digits16", "logger=none")
    assert (
        proc.returncode == 2 and "python -m lazygen.train" in proc.stderr and "Traceback" not in proc.stderr
    )
