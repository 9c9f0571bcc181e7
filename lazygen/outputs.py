"""A run's finished samples, read back in bounded memory: chunks of PNGs, a streamed ``samples.npz``.

At the papers' 50,000 images of 256 px the samples are 9.8 GB; nothing here holds more than one chunk of
them. ``samples.npz`` is written as the zip of ``.npy`` members that ``np.load`` reads, with ``arr_0``'s
header first and then each image's bytes in index order, so it can be built one image at a time.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lazygen.callbacks.writer import feature_file, sample_png
from lazygen.data.specs import SampleSpec
from lazygen.errors import LazygenError


def missing_samples(run_dir: Path, specs: Sequence[SampleSpec]) -> None:
    """Raise if any spec has no PNG (a rank that did not finish): the user reruns to fill them."""
    missing = [s.index for s in specs if not sample_png(run_dir, s.index).exists()]
    if missing:
        raise LazygenError(
            f"{len(missing)} samples are missing from {run_dir} (first: {missing[:5]}); run the same command "
            "again with hydra.run.dir pointing at this directory to generate them."
        )


def read_sample(run_dir: Path, index: int) -> np.ndarray:
    """One sample as (H, W, 3) uint8."""
    with Image.open(sample_png(run_dir, index)) as image:
        return np.asarray(image.convert("RGB"))


def read_features(run_dir: Path, index: int):
    """(features, logits) float32 tensors a generating rank kept for this sample, or None if absent or
    unreadable (then they are extracted again from the PNG)."""
    import torch

    try:
        with np.load(feature_file(run_dir, index)) as stored:
            return torch.from_numpy(stored["features"]), torch.from_numpy(stored["logits"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` header of a C-order array, as ``np.save`` would write it."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def write_samples_npz(path: Path, run_dir: Path, specs: Sequence[SampleSpec]) -> None:
    """``samples.npz`` (``arr_0``: (N, H, W, 3) uint8 in index order, ``labels``: (N,)) streamed from the
    PNGs, one image in memory at a time; written to a temporary name and renamed, so it is whole or absent."""
    first = read_sample(run_dir, specs[0].index)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((len(specs), *first.shape), first.dtype))
            for spec in specs:
                image = read_sample(run_dir, spec.index)
                if image.shape != first.shape:
                    raise LazygenError(
                        f"Sample {spec.index} in {run_dir} is {image.shape[:2]} px, the others "
                        f"{first.shape[:2]}: the run dir mixes runs. Delete it or choose another hydra.run.dir."
                    )
                member.write(np.ascontiguousarray(image).tobytes())
        labels = np.array([s.label for s in specs])
        with archive.open("labels.npy", "w") as member:
            member.write(_npy_header(labels.shape, labels.dtype))
            member.write(labels.tobytes())
    os.replace(tmp, path)


GRID_MAX_CLASS_ROWS = 20  # with at most this many classes the grid has one row per class
GRID_MIN_CELL_PX = 64  # small images are upscaled in the grid so a person can see them


def grid_indices(
    labels: Sequence[int], max_images: int, max_class_rows: int = GRID_MAX_CLASS_ROWS
) -> list[int]:
    """Positions (into ``labels``) of the images a grid shows, in the grid's reading order: with few
    classes the first ones of each class (ascending), otherwise the first ``max_images``."""
    classes = sorted(set(labels))
    if 0 < len(classes) <= max_class_rows:
        per_class = max(1, max_images // len(classes))
        return [i for c in classes for i in [j for j, label in enumerate(labels) if label == c][:per_class]]
    return list(range(min(max_images, len(labels))))


def image_grid(images: np.ndarray, max_images: int, labels: Sequence[int] | None = None) -> np.ndarray:
    """At most ``max_images`` images in a grid, upscaled (nearest) when they are small.

    With few classes every row holds the first images of one class, so a person can check the
    conditioning; otherwise the grid is near-square in sample order.
    """
    h, w = images.shape[1:3]
    shown = grid_indices(labels if labels is not None else [0] * len(images), max_images)
    if labels is not None and len(set(labels)) <= GRID_MAX_CLASS_ROWS:
        classes = sorted(set(labels))
        cells, filled = [], dict.fromkeys(classes, 0)
        for i in shown:
            cells.append((classes.index(labels[i]), filled[labels[i]], i))
            filled[labels[i]] += 1
        rows, cols = len(classes), max(filled.values())
    else:
        cols = math.ceil(math.sqrt(len(shown)))
        rows = math.ceil(len(shown) / cols)
        cells = [(*divmod(k, cols), i) for k, i in enumerate(shown)]
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for r, c, i in cells:
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    scale = max(1, math.ceil(GRID_MIN_CELL_PX / min(h, w)))
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)
