"""model=synthetic: seeded images with no network, for testing and timing the pipeline at any scale."""

from __future__ import annotations

import numpy as np
from helpers import cli, compose_cfg, read_metrics

from lazygen.run import run_job

ARGS = ["model=synthetic", "logger=none", "callbacks.progress_bar=false", "hardware.num_threads=1"]


def _images(run_dir) -> np.ndarray:
    return np.load(run_dir / "samples.npz")["arr_0"]


def test_images_depend_only_on_their_seed_at_any_resolution_and_batch(tmp_path):
    a = run_job(
        compose_cfg(*ARGS, "data.num_images=12", "data.batch_size=5", "model.image_size=48"), tmp_path / "a"
    )
    run_job(
        compose_cfg(*ARGS, "data.num_images=12", "data.batch_size=12", "model.image_size=48"), tmp_path / "b"
    )
    images = _images(tmp_path / "a")
    assert images.shape == (12, 48, 48, 3) and a["meta/num_images"] == 12
    np.testing.assert_array_equal(images, _images(tmp_path / "b"))
    assert len({img.tobytes() for img in images}) == 12  # every seed draws its own image
    assert a["flops/tflops_per_img"] == 0 and a["perf/post_overhead_s_per_img"] > 0


def test_two_ddp_processes_write_the_same_images_as_one(tmp_path):
    proc = cli(*ARGS, "hardware=cpu_ddp", "data.num_images=6", "data.batch_size=2", "model.image_size=32",
               f"hydra.run.dir={tmp_path / 'ddp'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_job(compose_cfg(*ARGS, "data.num_images=6", "model.image_size=32"), tmp_path / "one")
    assert read_metrics(tmp_path / "ddp")["meta/world_size"] == 2
    np.testing.assert_array_equal(_images(tmp_path / "ddp"), _images(tmp_path / "one"))
