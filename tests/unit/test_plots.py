"""The Pareto front, the plot and the W&B comparison table (offline)."""

from __future__ import annotations

import json

import pytest

from lazygen.config import LoggerConf
from lazygen.plots import pareto_front, plot_pareto, trade_off_points
from lazygen.tracking import log_comparison


def test_the_front_keeps_exactly_the_points_nothing_beats():
    points = [(1.0, 20.0), (2.0, 25.0), (2.0, 30.0), (3.0, 24.0), (4.0, 40.0), (1.5, 19.0)]
    assert pareto_front(points, maximise_y=False) == [5, 3, 4]  # FID: lower is better
    assert pareto_front(points, maximise_y=True) == [4]  # PSNR: higher is better


def _rows() -> list[dict]:
    def row(speedup, fid, se, psnr, latency):
        return {"flop_speedup": speedup, "psnr_vs_baseline": psnr, "overrides": f"s={speedup}",
                "metrics": {"quality/fid": fid, "quality/fid_se": se, "perf/latency_s_per_img": latency}}  # fmt: skip

    return [row(1.0, 20.0, 1.0, 100.0, 1.0), row(2.0, 22.0, 1.2, 30.0, 0.6), row(4.0, 30.0, 1.5, 22.0, 0.3)]


def test_the_plot_has_both_speedups_and_both_quality_axes(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _rows()
    points = trade_off_points(rows, [r["overrides"] for r in rows])
    assert (
        points[0]["baseline"]
        and points[0]["psnr"] is None
        and points[2]["wall_speedup"] == pytest.approx(1 / 0.3)
    )
    paths = plot_pareto(points, tmp_path, "test")
    assert [p.name for p in paths] == ["pareto.png", "pareto.svg"] and all(
        p.stat().st_size > 10_000 for p in paths
    )


def test_an_offline_wandb_run_holds_the_comparison_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = _rows()
    mode = log_comparison(LoggerConf(kind="wandb", mode="offline"), tmp_path, rows, [r["overrides"] for r in rows],
                          [], "sweep-x")  # fmt: skip
    assert mode == "offline"
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/comparison_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["run", "flop_speedup", "psnr_vs_baseline"] and len(table["data"]) == 3


def test_an_accelerated_run_draws_its_recompute_heatmap_and_the_baseline_beside_it(tmp_path):
    pytest.importorskip("matplotlib")
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from helpers import FAST, compose_cfg

    from lazygen.run import run_job

    run_job(compose_cfg(*FAST, "cache=lazymar", "cache.refresh_start=1", "cache.refresh_interval=2",
                        "data.num_images=3", "metrics.speedup.enabled=true", "metrics.speedup.num_images=3",
                        "hardware.num_threads=1"), tmp_path)  # fmt: skip
    detail = json.loads((tmp_path / "cache.json").read_text())["recompute_frac_by_layer_step"]
    assert len(detail) == 12 and all(len(v) == 4 for v in detail.values())  # 6 + 6 blocks, 4 steps
    assert min(min(v) for v in detail.values()) < 1 and detail["encoder.0"][0] == 1.0  # step 0 in full
    with Image.open(tmp_path / "cache.png") as heatmap:
        assert heatmap.size[0] > 600
    pairs = np.asarray(Image.open(tmp_path / "grid_vs_baseline.png"))
    cell = pairs.shape[0] // 2
    assert pairs.shape[1] == 3 * cell  # three seeds: accelerated over baseline
    samples = np.load(tmp_path / "samples.npz")["arr_0"]
    top_left = pairs[:cell, :cell][:: cell // 16, :: cell // 16]
    np.testing.assert_array_equal(top_left, samples[0])  # the top row is this run's own image


def test_a_search_without_fid_gets_no_empty_fid_row_and_short_labels():
    from lazygen.plots import plotted_metrics, short_setting

    no_fid = [{"fid": None, "psnr": 30.0}, {"fid": None, "psnr": 25.0}]
    assert [m[0] for m in plotted_metrics(no_fid)] == ["psnr"]
    assert [m[0] for m in plotted_metrics([{"fid": 110.0, "psnr": None}, {"fid": 120.0, "psnr": 20.0}])] == [
        "fid", "psnr"]  # fmt: skip
    label = "cache.refresh_interval=12 cache.retain_ratio=0.39153250554509667 method=gtr_16"
    assert short_setting(label) == "cache.refresh_interval=12 cache.retain_ratio=0.392 method=gtr_16"


def test_runs_without_flops_leave_the_flop_panel_empty_not_a_lone_baseline(tmp_path):
    """A sweep with ``metrics.flops.enabled=false`` has no FLOP speedups: the baseline is not put at 1x alone."""
    pytest.importorskip("matplotlib")
    rows = _rows()
    for row in rows:
        row["flop_speedup"] = None
    points = trade_off_points(rows, [r["overrides"] for r in rows])
    assert [p["flop_speedup"] for p in points] == [None, None, None]
    assert points[2]["wall_speedup"] == pytest.approx(1 / 0.3)
    assert trade_off_points(_rows(), ["a", "b", "c"])[0]["flop_speedup"] == 1.0  # with FLOPs it stays
    assert plot_pareto(points, tmp_path, "no flops")[0].stat().st_size > 10_000
