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
    # 2 rows (CFG) x 2 layers x 4 heads x (1 class + 64 image slots) x (k + v: 2 x 8 dims x fp32, plus the
    # slot's fp32 inverse value norm and int16 position), per image
    assert m["mem/kv_cache_bytes_per_img"] == 2 * 2 * 4 * (1 + 64) * (2 * 8 * 4 + 4 + 2)
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
