"""Beyond one machine: each multirun job through the submitit launcher, and the SLURM presets."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import cli, read_metrics

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def test_a_multirun_through_the_submitit_local_launcher_runs_every_job(tmp_path):
    proc = cli("-m", "hydra/launcher=submitit_local", "model=synthetic", "data.num_images=4", "logger=none",
               "callbacks.progress_bar=false", "model.image_size=16,24", f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / ".submitit").glob("*"))  # the jobs went through submitit
    for job, side in (("0", 16), ("1", 24)):
        assert read_metrics(tmp_path / job)["meta/num_images"] == 4
        assert np.load(tmp_path / job / "samples.npz")["arr_0"].shape == (4, side, side, 3)


def test_the_slurm_presets_ask_for_one_task_per_gpu_on_every_node():
    proc = cli("hydra/launcher=slurm", "hardware=slurm", "hardware.num_nodes=2", "hardware.devices=4",
               "--cfg", "all", "--resolve")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    launcher, hardware = config["hydra"]["launcher"], config["hardware"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert (hardware["num_nodes"], hardware["devices"], hardware["strategy"]) == (2, 4, "ddp")
