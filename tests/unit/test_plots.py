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
