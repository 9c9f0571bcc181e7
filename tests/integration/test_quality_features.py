"""Quality features are extracted by each rank as it generates, kept in the run dir, and not redone."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FAST, cli, compose_cfg, read_metrics

import lazygen.run as run_module
from lazygen.run import run_job

N = 10
ARGS = [*FAST, f"data.num_images={N}", "hardware.num_threads=1"]
QUALITY = ("quality/fid", "quality/is_mean", "quality/class_acc")


def test_both_ddp_ranks_extract_their_features_and_give_one_process_values(tmp_path):
    single = cli(*ARGS, f"hydra.run.dir={tmp_path / 'one'}")
    ddp = cli(*ARGS, "hardware=cpu_ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert single.returncode == 0 and ddp.returncode == 0, (single.stderr + ddp.stderr)[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp")
    assert two["meta/world_size"] == 2
    for key in QUALITY:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    stored = sorted(p.name for p in (tmp_path / "ddp" / "features").glob("*.npz"))
    assert stored == [f"{i:06d}.npz" for i in range(N)]  # written by the ranks, batch by batch
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
