"""hparams_search presets: a multi-objective Optuna study in the sweep dir, its Pareto set, and a resume."""

from __future__ import annotations

import json

import pytest
from helpers import cli

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

FAST_SEARCH = ["data.num_images=2", "data.batch_size=2", "metrics.speedup.num_images=2", "sampler.num_iter=8",
               "sampler.diffusion_steps=5", "logger=none", "callbacks.progress_bar=false",
               "hardware.num_threads=1"]  # fmt: skip


def test_a_lazymar_search_stores_its_study_writes_its_front_and_resumes(tmp_path):
    args = [
        "-m",
        "hparams_search=lazymar_tiny",
        "hydra.sweeper.n_trials=2",
        *FAST_SEARCH,
        f"hydra.sweep.dir={tmp_path}",
    ]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "search_front.json").read_text())
    assert len(rows) == len(list(tmp_path.glob("trial_*/metrics.json"))) >= 1
    assert any(r["on_front"] for r in rows)
    for row in rows:  # every trial is measured on both objectives, and the front is really non-dominated
        speed, psnr = row["values"]
        assert speed > 1 and psnr > 0
        if row["on_front"]:
            assert not any(o["values"][0] >= speed and o["values"][1] >= psnr and o["values"] != row["values"]
                           for o in rows)  # fmt: skip
    assert (tmp_path / "pareto.png").exists() and "on front" in (tmp_path / "search_front.md").read_text()
    study = optuna.load_study(study_name="search_lazymar_tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 2
    proc = cli(*args, "hydra.sweeper.n_trials=1")  # the same sweep dir: the study continues with one more
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="search_lazymar_tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 3


def test_the_gtr_search_preset_composes_its_space():
    proc = cli("hparams_search=gtr_tiny", "--cfg", "hydra")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sampler.stage_steps" in proc.stdout and "sampler.t_max" in proc.stdout
