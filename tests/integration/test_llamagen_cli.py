"""LlamaGen runs from the command line: sampler=ar with cache=adsa, memory and attention in metrics.json."""

from __future__ import annotations

import json

from helpers import cli

SMALL = ["model=tiny_llamagen", "model.init=random", "model.arch.dim=32", "model.arch.n_layer=2", "data.num_images=2",
         "data.batch_size=2", "logger=none", "callbacks.progress_bar=false", "metrics.quality.enabled=false"]  # fmt: skip


def test_adsa_run_reports_kv_memory_attention_and_a_paired_baseline(tmp_path):
    proc = cli(
        *SMALL, "cache=adsa", "cache.budget=64", "metrics.speedup.num_images=2", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    # 2 rows (CFG) x 2 layers x 4 heads x [(1 class + 64 image slots) x (k + v: 2 x 8 dims x fp32, plus the
    # slot's fp32 inverse value norm, int16 position and fp32 candidate mask) + the per-step ranking's ring
    # of the last `local` = 2 grid rows = 32 slots (int64)], per image
    assert m["mem/kv_cache_bytes_per_img"] == 2 * 2 * 4 * ((1 + 64) * (2 * 8 * 4 + 4 + 2 + 4) + 32 * 8)
    assert m["mem/kv_cache_bytes"] == 2 * m["mem/kv_cache_bytes_per_img"] and m["mem/peak_bytes"] > 0
    attended = sum(min(n, 64) for n in range(1, 256)) / sum(range(1, 256))
    assert abs(m["cache/attended_frac"] - attended) < 1e-9
    assert m["flops/tflops_per_img"] < m["flops/baseline_tflops_per_img"]  # attention over fewer keys
    assert 0 < m["quality/psnr_vs_baseline"] < 100  # the same seeds give other images
    assert "cache/recompute_frac" not in m  # a MAR notion


def test_full_budget_adsa_reproduces_the_baseline_images(tmp_path):
    base, adsa = tmp_path / "base", tmp_path / "adsa"
    assert cli(*SMALL, f"hydra.run.dir={base}").returncode == 0
    assert (
        cli(
            *SMALL, "cache=adsa", "cache.budget=256", "metrics.speedup.enabled=false", f"hydra.run.dir={adsa}"
        ).returncode
        == 0
    )
    for index in range(2):
        assert (base / "samples" / f"{index:06d}.png").read_bytes() == (
            adsa / "samples" / f"{index:06d}.png"
        ).read_bytes()
    assert (
        json.loads((base / "metrics.json").read_text())["mem/kv_cache_bytes_per_img"]
        == 2 * 2 * 2 * 32 * 4 * 257
    )


def test_parallel_decoders_report_passes_acceptance_and_flops(tmp_path):
    """sampler=sjd and sampler=zipar (with the bounded cache): model calls per image for every sampler,
    SJD's acceptance overall and per draft slot in sampler.json, FLOPs of SJD counted on a real batch."""
    runs = {
        "ar": [],
        "sjd": ["sampler=sjd", "sampler.window=4"],
        "zipar": ["method=zipar_adsa", "cache.budget=64"],
    }
    metrics = {}
    for name, extra in runs.items():
        proc = cli(*SMALL, *extra, "metrics.speedup.num_images=2", f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["ar"]["perf/model_calls_per_img"] == 256
    assert metrics["zipar"]["perf/model_calls_per_img"] == 2 * 16 + 14 * 8  # 144
    assert metrics["zipar"]["mem/kv_cache_bytes_per_img"] < metrics["ar"]["mem/kv_cache_bytes_per_img"]
    sjd = metrics["sjd"]
    assert 0 <= sjd["sampler/accept_rate"] <= 1 and sjd["perf/model_calls_per_img"] <= 256
    detail = json.loads((tmp_path / "sjd" / "sampler.json").read_text())
    assert len(detail["accept_rate_by_draft_slot"]) == 3 and detail["drafts_tested_by_slot"][0] > 0
    # every pass verifies a window of 4: more FLOPs than one token per pass, counted, not estimated
    assert sjd["flops/tflops_per_img"] > sjd["flops/baseline_tflops_per_img"]
    assert "sampler/accept_rate" not in metrics["zipar"]


def test_parallel_decoder_with_sparse_adsa_is_refused(tmp_path):
    proc = cli(*SMALL, "sampler=sjd", "cache=adsa", "cache.mode=sparse", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "cache.mode=dynamic" in proc.stderr and "Traceback" not in proc.stderr


def test_the_pairs_grid_shows_a_readable_strip_of_a_large_speedup_subset(tmp_path):
    """A speedup subset of 20 images: the accelerated-over-baseline grid shows the first 16 pairs."""
    from PIL import Image

    from lazygen.run import PAIRS_GRID_FILE, PAIRS_SHOWN

    proc = cli(*SMALL, "sampler=zipar", "data.num_images=20", "data.batch_size=10", "metrics.flops.enabled=false",
               "metrics.speedup.num_images=20", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(tmp_path / PAIRS_GRID_FILE) as grid:
        width, height = grid.size
    assert width == PAIRS_SHOWN * (height // 2)
