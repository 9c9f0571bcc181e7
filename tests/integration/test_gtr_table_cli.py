"""One command, one table: a comparison preset's multirun ends with the table of its jobs against job 0."""

from __future__ import annotations

import json

from helpers import cli


def test_table_preset_writes_the_comparison_after_the_last_job(tmp_path):
    proc = cli("-m", "experiment=gtr_table_tiny", "method=mar_64,gtr_8,gtr_lazymar_8", "data.num_images=2",
               "data.batch_size=2", "logger=none", "callbacks.progress_bar=false", "metrics.quality.enabled=false",
               f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert table in proc.stdout
    rows = {
        r["overrides"].split("method=")[1].split()[0]: r
        for r in json.loads((tmp_path / "comparison.json").read_text())
    }
    assert list(rows) == ["mar_64", "gtr_8", "gtr_lazymar_8"]
    assert rows["mar_64"]["flop_speedup"] == 1.0
    # GtR at the 8-step budget is ~6x cheaper than MAR 64 x 100; LazyMAR's caches save more on top
    assert 4 < rows["gtr_8"]["flop_speedup"] < rows["gtr_lazymar_8"]["flop_speedup"]
    assert rows["gtr_lazymar_8"]["metrics"]["cache/recompute_frac"] < 1
    assert 0 < rows["gtr_8"]["psnr_vs_baseline"] < rows["mar_64"]["psnr_vs_baseline"]
    for method in rows:
        assert f"method={method}" in table
    from PIL import Image

    with Image.open(tmp_path / "pareto.png") as plot:  # the trade-off as a figure, next to the table
        assert plot.size[0] > 1000 and plot.size[1] > 800
    assert (tmp_path / "pareto.svg").read_text().lstrip().startswith("<?xml")


def test_a_table_without_its_baseline_job_says_so_and_keeps_the_jobs(tmp_path):
    proc = cli("-m", "experiment=gtr_table_tiny", "method=gtr_8", "data.num_images=2", "data.batch_size=2",
               "logger=none", "callbacks.progress_bar=false", "metrics.quality.enabled=false",
               "hydra.callbacks.compare.baseline=7", f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no comparison table" in proc.stderr and "--baseline" in proc.stderr
    assert (tmp_path / "0" / "metrics.json").exists() and not (tmp_path / "comparison.md").exists()
