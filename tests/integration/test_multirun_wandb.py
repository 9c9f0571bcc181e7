"""Sweeps: each Hydra multirun job is its own run, with its own W&B (offline) run."""

from __future__ import annotations

import json

from helpers import FAST, cli


def test_multirun_writes_one_offline_wandb_run_per_job(tmp_path):
    overrides = [o for o in FAST if not o.startswith("logger=")]
    proc = cli("-m", *overrides, "logger=wandb", "logger.mode=offline", "data.num_images=2",
               "sampler.num_iter=2,4", f"hydra.sweep.dir={tmp_path}", "metrics.flops.enabled=false",
               env={"WANDB_MODE": None})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        job_dir = tmp_path / job
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["meta/num_images"] == 2
        runs = list((job_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        assert any(p.stat().st_size > 0 for p in runs[0].glob("run-*.wandb"))
