"""End-to-end runs of ``python -m lazygen`` on the tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, REPO, cli, read_metrics

REQUIRED_KEYS = {"meta/num_images", "meta/world_size", "perf/latency_s_per_img", "flops/tflops_per_img"}


def _samples(run_dir: Path) -> np.ndarray:
    return np.load(run_dir / "samples.npz")["arr_0"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    proc = cli(*FAST, "data.num_images=5", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_run_writes_samples_npz_grid_and_metrics(single_run):
    metrics = read_metrics(single_run)
    assert REQUIRED_KEYS <= set(metrics)
    assert metrics["meta/num_images"] == 5 and metrics["meta/world_size"] == 1
    assert metrics["flops/tflops_per_img"] > 0 and metrics["perf/latency_s_per_img"] > 0
    samples = _samples(single_run)
    assert samples.shape == (5, 16, 16, 3) and samples.dtype == np.uint8
    assert sorted(p.name for p in (single_run / "samples").glob("*.png")) == [
        f"{i:06d}.png" for i in range(5)
    ]
    assert len(list((single_run / "latents").glob("*.npy"))) == 5
    assert (single_run / "grid.png").exists()
    assert "perf/speedup" not in metrics  # switched off in FAST


def test_ddp_spawn_two_processes_writes_the_same_images(single_run, tmp_path):
    proc = cli(*FAST, "hardware=cpu_ddp", "data.num_images=5", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["meta/world_size"] == 2
    records = [
        json.loads(line)
        for f in (tmp_path / "stats").glob("rank*.jsonl")
        for line in f.read_text().splitlines()
    ]
    indices = Counter(i for r in records for i in r["indices"])
    assert sorted(indices) == list(range(5)) and set(indices.values()) == {1}
    assert {r["rank"] for r in records} == {0, 1}
    np.testing.assert_array_equal(_samples(tmp_path), _samples(single_run))


def test_batch_size_does_not_change_images(single_run, tmp_path):
    proc = cli(*FAST, "data.num_images=5", "data.batch_size=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(_samples(tmp_path), _samples(single_run))


def test_killed_run_resumes_and_ends_with_every_sample_once(single_run, tmp_path):
    args = [*FAST, "data.num_images=5", "data.batch_size=1", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "lazygen", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stats = tmp_path / "stats" / "rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (stats.exists() and len(stats.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = len(stats.read_text().splitlines())
    assert 2 <= first < 5, "the run should have been killed part-way"
    proc = cli(*args[:-1], f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    indices = Counter(i for r in records for i in r["indices"])
    assert sorted(indices) == list(range(5)) and set(indices.values()) == {1}
    assert read_metrics(tmp_path)["meta/resumed_images"] == first
    np.testing.assert_array_equal(_samples(tmp_path), _samples(single_run))


def test_accelerated_run_measures_speedup_against_paired_baseline(tmp_path):
    # fewer steps than the model's default (64) is an accelerated run: the baseline runs on a subset
    proc = cli(*FAST, "metrics.speedup.enabled=auto", "data.num_images=2", "metrics.speedup.num_images=2",
               "sampler.diffusion_steps=null",
               f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(tmp_path)
    assert m["perf/speedup"] > 1
    assert m["flops/speedup"] == pytest.approx(m["flops/baseline_tflops_per_img"] / m["flops/tflops_per_img"])
    assert m["flops/speedup"] > 1
    assert 0 < m["quality/psnr_vs_baseline"] < 100


def test_quality_metrics_with_a_pluggable_extractor_and_reference_stats(single_run, tmp_path):
    import torch
    from toy_extractor import make

    from lazygen.metrics.quality import compute_stats, save_reference_stats

    images = torch.from_numpy(_samples(single_run)).permute(0, 3, 1, 2)
    stats = tmp_path / "ref.npz"
    save_reference_stats(stats, *compute_stats(make()(images).features))
    run_dir = tmp_path / "run"
    proc = cli(*FAST, "data.num_images=5", "metrics.quality.enabled=true", "metrics.quality.is_splits=1",
               "metrics.quality.extractor=toy_extractor.make", f"metrics.quality.reference_stats={stats}",
               f"hydra.run.dir={run_dir}", env={"PYTHONPATH": str(REPO / "tests" / "integration")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    # the same images against their own statistics: FID ~ 0
    assert abs(metrics["quality/fid"]) < 1e-3
    assert metrics["quality/is_mean"] >= 1.0


def test_ddp_subprocess_launcher_writes_the_same_images(single_run, tmp_path):
    # strategy=ddp re-executes `python -m lazygen` per rank (what hardware=ddp uses on GPUs)
    proc = cli(
        *FAST, "hardware=cpu_ddp", "hardware.strategy=ddp", "data.num_images=5", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(tmp_path)["meta/world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "stats").glob("*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    np.testing.assert_array_equal(_samples(tmp_path), _samples(single_run))
