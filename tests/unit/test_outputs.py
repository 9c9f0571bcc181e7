"""Reading a run's samples back in bounded memory: the streamed samples.npz and the grid."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from lazygen.callbacks.writer import sample_png
from lazygen.data.specs import build_specs
from lazygen.outputs import grid_indices, image_grid, read_sample, write_samples_npz

SIDE = 64


def _run_dir(tmp_path: Path, n: int) -> tuple[Path, list]:
    specs = build_specs(n, 10, "balanced", 0)
    (tmp_path / "samples").mkdir()
    rng = np.random.default_rng(0)
    for s in specs:
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            sample_png(tmp_path, s.index)
        )
    return tmp_path, specs


def test_the_streamed_npz_equals_np_savez_and_holds_one_image_at_a_time(tmp_path):
    run_dir, specs = _run_dir(tmp_path, 200)
    images = np.stack([read_sample(run_dir, s.index) for s in specs])
    tracemalloc.start()
    write_samples_npz(run_dir / "samples.npz", run_dir, specs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < images.nbytes / 10  # np.stack + np.savez hold all 200 images (and more)
    streamed = np.load(run_dir / "samples.npz")
    np.savez(run_dir / "reference.npz", arr_0=images, labels=np.array([s.label for s in specs]))
    reference = np.load(run_dir / "reference.npz")
    assert streamed["arr_0"].shape == (200, SIDE, SIDE, 3) and streamed["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(streamed["arr_0"], reference["arr_0"])
    np.testing.assert_array_equal(streamed["labels"], reference["labels"])


def test_the_grid_of_a_selection_equals_the_grid_of_all_images(tmp_path):
    run_dir, specs = _run_dir(tmp_path, 30)
    images = np.stack([read_sample(run_dir, s.index) for s in specs])
    labels = [s.label for s in specs]
    shown = grid_indices(labels, 20)
    assert [labels[i] for i in shown] == sorted(labels[i] for i in shown)  # one row per class, ascending
    np.testing.assert_array_equal(
        image_grid(images[shown], 20, [labels[i] for i in shown]), image_grid(images, 20, labels)
    )
