"""cache=lazymar from the command line, and the comparison table of finished runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FAST, REPO, cli, read_metrics

from lazygen.compare import compare, fidelity, main, markdown

LAZY_FAST = [*FAST, "cache=lazymar", "sampler.num_iter=6", "cache.refresh_start=1", "cache.refresh_interval=3",
             "data.num_images=2"]  # fmt: skip


def test_lazymar_run_reports_its_cache_statistics(tmp_path):
    proc = cli(*LAZY_FAST, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(tmp_path)
    assert m["cache/full_steps"] == 3 and m["cache/reused_steps"] == 3  # steps 0, 1 and 4 are full
    assert 0 < m["cache/recompute_frac"] < 1
    assert m["flops/tflops_per_img"] > 0
    detail = json.loads((tmp_path / "cache.json").read_text())
    assert len(detail["recompute_frac_by_step"]) == 6 and detail["recompute_frac_by_step"][0] == 1.0
    assert "cache/recompute_frac" in proc.stderr  # the console summary shows it


def test_condition_cache_without_cfg_is_a_clear_cli_error():
    proc = cli(*LAZY_FAST, "sampler.cfg=1.0", "cache.condition_cache=true")
    assert proc.returncode == 2
    assert "cache.condition_cache=true needs classifier-free guidance" in proc.stderr
    assert "Traceback" not in proc.stderr


def _fake_run(path, images, metrics, labels=None):
    path.mkdir(parents=True)
    labels = np.arange(len(images)) % 10 if labels is None else labels
    np.savez(path / "samples.npz", arr_0=images, labels=labels)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_compare_measures_fidelity_over_every_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base_images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    noisy = np.clip(base_images.astype(int) + rng.integers(-8, 9, base_images.shape), 0, 255).astype(np.uint8)
    base = _fake_run(tmp_path / "m" / "0", base_images, {"flops/tflops_per_img": 2.0, "quality/fid": 10.0})
    _fake_run(tmp_path / "m" / "1", noisy, {"flops/tflops_per_img": 0.5, "quality/fid": 12.0,
                                            "quality/class_acc": 0.9, "quality/class_acc_se": 0.01})  # fmt: skip
    _fake_run(tmp_path / "m" / "2", base_images, {"flops/tflops_per_img": 1.0})
    (base / ".hydra").mkdir()
    (base / ".hydra" / "config.yaml").write_text("model: {name: [unclosed")  # a config that does not load
    rows = compare(base, [tmp_path / "m" / "1", tmp_path / "m" / "2"])
    assert "vs_baseline" not in rows[1]  # no paired differences, but the table
    assert rows[1]["flop_speedup"] == 4.0 and rows[2]["flop_speedup"] == 2.0
    mse = ((noisy.astype(float) - base_images) ** 2).reshape(6, -1).mean(1)
    assert rows[1]["psnr_vs_baseline"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)))
    assert rows[2]["psnr_vs_baseline"] == 100.0 == fidelity(base_images, base_images)
    assert "4.00×" in markdown(rows)
    main([str(tmp_path / "m"), "--baseline", "0", "--out", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "| 12.0 |" in out  # the second run's FID in the printed table (no error recorded)
    assert "| 0.900 ± 0.010 |" in out  # a bootstrap error is shown next to its value
    assert len(json.loads((tmp_path / "t.json").read_text())) == 3


def test_compare_gives_each_run_its_paired_quality_difference_from_the_baseline(tmp_path):
    """Runs of the same seeds: the table's paired ΔFID is the difference of the runs' own FIDs, with an error."""
    proc = cli("-m", *FAST, "data.num_images=20", "hardware.num_threads=1", "sampler.num_iter=4,2",
               f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(tmp_path / "0", tmp_path / "again")  # the baseline's samples again
    rows = compare(tmp_path / "0", [tmp_path / "1", tmp_path / "again"])
    m0, m1 = read_metrics(tmp_path / "0"), read_metrics(tmp_path / "1")
    paired = rows[1]["vs_baseline"]
    assert paired["quality/fid_diff"] == pytest.approx(m1["quality/fid"] - m0["quality/fid"], rel=1e-6)
    assert paired["quality/class_acc_diff"] == pytest.approx(
        m1["quality/class_acc"] - m0["quality/class_acc"]
    )
    assert paired["quality/fid_diff_se"] > 0
    itself = rows[2]["vs_baseline"]
    assert itself["quality/fid_diff"] == 0 and itself["quality/fid_diff_se"] == 0
    table = markdown(rows)
    assert "ΔFID vs baseline (paired)" in table and "+0.0 ± 0.0 (noise)" in table
    assert f"{paired['quality/fid_diff']:+.1f} ± {paired['quality/fid_diff_se']:.1f}" in table


def test_compare_pairs_class_accuracy_only_where_the_runs_report_it(tmp_path):
    """An extractor that classifies other classes than the generator's (InceptionV3's 1008 for ImageNet's
    1000) gives runs no class accuracy, so the table pairs none either; FID is still paired."""
    import torch
    from toy_extractor import OtherClassifier

    from lazygen.metrics.quality import compute_stats, save_reference_stats

    stats = tmp_path / "ref.npz"
    save_reference_stats(stats, *compute_stats(OtherClassifier()(torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
                                                                  + torch.arange(4)[:, None, None, None] * 60).features))  # fmt: skip
    proc = cli("-m", *FAST, "data.num_images=10", "hardware.num_threads=1", "sampler.num_iter=4,2",
               "metrics.quality.enabled=true", "metrics.quality.extractor=toy_extractor.OtherClassifier",
               f"metrics.quality.reference_stats={stats}",
               f"hydra.sweep.dir={tmp_path / 'm'}", env={"PYTHONPATH": str(REPO / "tests" / "integration")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quality/class_acc" not in read_metrics(tmp_path / "m" / "1")
    paired = compare(tmp_path / "m" / "0", [tmp_path / "m" / "1"])[1]["vs_baseline"]
    assert "quality/fid_diff" in paired and "quality/class_acc_diff" not in paired


def test_compare_refuses_runs_of_other_samples(tmp_path):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    base = _fake_run(tmp_path / "a", images, {})
    other = _fake_run(tmp_path / "b", images, {}, labels=np.array([9, 9, 9, 9]))
    with pytest.raises(SystemExit) as exit_info:
        main([str(base), str(other)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # a folder of runs needs --baseline
