"""Quality features are extracted by each rank as it generates, kept in the run dir, and not redone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FAST, cli, compose_cfg, read_metrics

import lazygen.run as run_module
from lazygen.config import validate
from lazygen.metrics.quality import compute_stats, frechet_distance, load_reference_stats
from lazygen.run import fid_reference, run_job

N = 10
ARGS = [*FAST, f"data.num_images={N}", "hardware.num_threads=1"]
QUALITY = ("quality/fid", "quality/is_mean", "quality/class_acc")
FID_ROUNDOFF = 1e-3
FEATURE_RTOL, FEATURE_ATOL = 1e-3, 1e-2  # features reach about 45


def _fid_of_kept_features(run_dir) -> float:
    run = validate(compose_cfg(*ARGS))
    feats = np.stack([np.load(p)["features"] for p in sorted((run_dir / "features").glob("*.npz"))])
    mu, sigma = compute_stats(torch.from_numpy(feats))
    return frechet_distance(mu, sigma, *load_reference_stats(fid_reference(run, None)))


def test_both_ddp_ranks_extract_their_features_and_give_one_process_values(tmp_path):
    single = cli(*ARGS, f"hydra.run.dir={tmp_path / 'one'}")
    ddp = cli(*ARGS, "hardware=cpu_ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert single.returncode == 0 and ddp.returncode == 0, (single.stderr + ddp.stderr)[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp")
    assert two["meta/world_size"] == 2
    stored = sorted(p.name for p in (tmp_path / "ddp" / "features").glob("*.npz"))
    assert stored == [f"{i:06d}.npz" for i in range(N)]  # written by the ranks, batch by batch
    # Every rank's images count exactly once: the run's FID is that of all the kept features. (One
    # image lost or counted twice moves this FID by 3% or more.)
    assert two["quality/fid"] == pytest.approx(_fid_of_kept_features(tmp_path / "ddp"), rel=1e-6)
    # And they are the single process's images: the ranks batch the images differently, so the
    # features agree up to float32 round-off, which the square root of this FID's singular covariance
    # product (10 images, 64 features) magnifies to about 1e-5 relative.
    for name in stored:
        mine, theirs = (np.load(tmp_path / run / "features" / name)["features"] for run in ("ddp", "one"))
        np.testing.assert_allclose(mine, theirs, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    assert two["quality/class_acc"] == one["quality/class_acc"]
    assert two["quality/is_mean"] == pytest.approx(one["quality/is_mean"], rel=1e-6)
    assert two["quality/fid"] == pytest.approx(one["quality/fid"], rel=FID_ROUNDOFF)
    records = [
        json.loads(line)
        for f in (tmp_path / "ddp" / "stats").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert {r["rank"] for r in records} == {0, 1}


class _Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.images = inner, 0
        self.num_features, self.num_classes = inner.num_features, getattr(inner, "num_classes", None)

    def forward(self, images: torch.Tensor):
        self.images += images.shape[0]
        return self.inner(images)


def test_a_resumed_run_reads_the_kept_features_and_extracts_only_missing_ones(tmp_path, monkeypatch):
    first = run_job(compose_cfg(*ARGS), tmp_path)
    (tmp_path / "features" / "000003.npz").write_bytes(b"damaged")
    made = []
    original = run_module.make_extractor

    def counting(name, home):
        made.append(_Counting(original(name, home)))
        return made[-1]

    monkeypatch.setattr(run_module, "make_extractor", counting)
    again = run_job(compose_cfg(*ARGS), tmp_path)
    assert sum(e.images for e in made) == 1  # only the damaged one was extracted again
    for key in QUALITY:
        assert again[key] == pytest.approx(first[key], rel=1e-6), key


def test_features_of_another_extractor_are_discarded(tmp_path):
    run_job(compose_cfg(*ARGS), tmp_path)
    (tmp_path / "features" / "extractor.txt").write_text("inception")
    run_job(compose_cfg(*ARGS), tmp_path)
    assert (tmp_path / "features" / "extractor.txt").read_text() == "digits16"
    assert not list((tmp_path / "features").glob("*.npz"))  # nothing generated, so nothing re-kept here
