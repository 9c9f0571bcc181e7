"""Writes every finished sample as soon as its batch ends, so an interrupted run loses nothing.

Per sample: ``samples/{index:06d}.png`` and, optionally, ``latents/{index:06d}.npy``. Per batch, after
the files: one line in ``stats/rank{r}.jsonl`` with the indices and the seconds it took. Those lines are
the record of finished work that resuming reads; files are written to a temporary name and renamed, so
a kill never leaves a half-written sample behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

SAMPLES_DIR = "samples"
LATENTS_DIR = "latents"
STATS_DIR = "stats"
FEATURES_DIR = "features"  # per sample: the quality extractor's features and logits (features.npz)


def feature_file(run_dir: Path, index: int) -> Path:
    return run_dir / FEATURES_DIR / f"{index:06d}.npz"


def sample_png(run_dir: Path, index: int) -> Path:
    return run_dir / SAMPLES_DIR / f"{index:06d}.png"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: no two writers share one
    write(tmp)
    os.replace(tmp, path)


def _save_png(path: Path, image: np.ndarray) -> None:
    _atomic(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(path, write)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(path, write)


def read_batch_records(run_dir: Path) -> list[dict]:
    """All finished-batch records of a run directory (every rank, earlier attempts included)."""
    records = []
    for path in sorted((run_dir / STATS_DIR).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: its batch is simply redone
    return records


def finished_indices(run_dir: Path, records: list[dict]) -> set[int]:
    """Indices whose batch was recorded (in ``records``) and whose PNG exists."""
    done = {i for r in records for i in r["indices"]}
    return {i for i in done if sample_png(run_dir, i).exists()}


class SampleWriter(BasePredictionWriter):
    def __init__(self, run_dir: str | Path, save_latents: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.run_dir = Path(run_dir)
        self.save_latents = save_latents

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        (self.run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        (self.run_dir / STATS_DIR).mkdir(parents=True, exist_ok=True)
        indices = [int(i) for i in prediction["index"]]
        images = prediction["images"].numpy()
        for k, index in enumerate(indices):
            _save_png(sample_png(self.run_dir, index), images[k])
        if self.save_latents:
            (self.run_dir / LATENTS_DIR).mkdir(parents=True, exist_ok=True)
            latents = prediction["latents"].to(torch.float32).numpy()
            for k, index in enumerate(indices):
                _save_npy(self.run_dir / LATENTS_DIR / f"{index:06d}.npy", latents[k])
        if "features" in prediction:  # before the record: a recorded sample has its features
            (self.run_dir / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
            features, logits = prediction["features"].numpy(), prediction["logits"].numpy()
            for k, index in enumerate(indices):
                _save_npz(feature_file(self.run_dir, index), features=features[k], logits=logits[k])
        record = {
            "rank": trainer.global_rank,
            "batch_idx": batch_idx,
            "indices": indices,
            "labels": [int(c) for c in prediction["label"]],
            "seconds": float(prediction["seconds"]),
            "compile_seconds": float(prediction.get("compile_seconds", 0.0)),
            "cache": prediction.get("cache", {}),
            "peak_mem_bytes": int(prediction.get("peak_mem_bytes", 0)),
        }
        with open(self.run_dir / STATS_DIR / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
