"""Faults a long run meets: changed settings, damaged files, a second process, signals, a bad run dir,
Hydra-level mistakes and multiruns with bad or failing jobs (issue 15). Each fails without its fix."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, REPO, cli, compose_cfg, read_metrics

from lazygen import cli as lazygen_cli
from lazygen.errors import CheckpointError, ConfigError
from lazygen.run import run_job
from lazygen.rundir import LOCK_FILE
from lazygen.weights.checkpoint import read_state_dict

N = 4
ARGS = [*FAST, f"data.num_images={N}", "hardware.num_threads=1"]


def _run(run_dir: Path, *overrides: str) -> dict:
    return run_job(compose_cfg(*ARGS, *overrides), run_dir)


def _images(run_dir: Path) -> np.ndarray:
    return np.load(run_dir / "samples.npz")["arr_0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished")
    _run(run_dir)
    return run_dir


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


def test_resuming_with_other_sample_settings_is_refused_and_keeps_the_run(finished, tmp_path):
    run_dir = _copy(finished, tmp_path / "run")
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(ConfigError, match=r"sampler.num_iter: 4 -> 8.*new run directory"):
        _run(run_dir, "sampler.num_iter=8")
    assert (run_dir / "metrics.json").read_text() == before
    metrics = _run(run_dir, "metrics.flops.enabled=false", "callbacks.grid_max_images=4")  # free to differ
    assert metrics["meta/resumed_images"] == N


def test_damaged_pngs_and_missing_latents_are_generated_again(finished, tmp_path):
    run_dir = _copy(finished, tmp_path / "run")
    png = run_dir / "samples" / "000001.png"
    png.write_bytes(png.read_bytes()[:10])
    (run_dir / "latents" / "000002.npy").unlink()
    (run_dir / "latents" / "000003.npy").write_bytes(b"\x93NUMPY")
    metrics = _run(run_dir)
    assert metrics["meta/resumed_images"] == N - 3
    np.testing.assert_array_equal(_images(run_dir), _images(finished))
    assert all(np.load(p).size for p in (run_dir / "latents").glob("*.npy"))


def test_a_second_process_on_the_run_dir_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK_FILE).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname()}))
        with pytest.raises(ConfigError, match=rf"PID {alive.pid}.*another hydra.run.dir"):
            _run(run_dir)
        assert not (run_dir / "samples").exists()
    finally:
        alive.kill()
        alive.wait()
    # the holder is gone now (a kill -9 leaves such a lock): the next run takes it over and releases it
    assert _run(run_dir)["meta/num_images"] == N
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_cleanly_and_print_the_resume_command(tmp_path, signum, code):
    args = [*ARGS, "data.num_images=12", "data.batch_size=1", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lazygen", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stats = tmp_path / "stats" / "rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (stats.exists() and stats.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr[-2000:]
    assert "resume with: python -m lazygen" in stderr and f"hydra.run.dir={tmp_path}" in stderr
    assert "Traceback" not in stderr and not (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / "metrics.json").exists()  # stopped before the end, not run to completion
    done = stats.read_text().count("\n")
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_metrics(tmp_path)["meta/resumed_images"] == done
    assert len(_images(tmp_path)) == 12


def test_a_run_dir_that_is_a_file_is_one_paragraph_and_exit_2(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    proc = cli(*ARGS, f"hydra.run.dir={path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "hydra.run.dir" in proc.stderr


def test_a_full_disk_is_one_paragraph_and_exit_2_and_keeps_finished_work(tmp_path, monkeypatch, capsys):
    import lazygen.callbacks.writer as writer

    written = []
    save = writer._save_png

    def save_until_full(path: Path, image: np.ndarray) -> None:
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(path, image)
        written.append(path)

    monkeypatch.setattr(writer, "_save_png", save_until_full)
    monkeypatch.setattr(sys, "argv", ["lazygen", *ARGS, "data.batch_size=1", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        lazygen_cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command to resume" in err
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["000000.png", "000001.png"]
    assert not (tmp_path / LOCK_FILE).exists()


def test_hydra_level_mistakes_exit_2_without_a_traceback():
    proc = cli(*ARGS, "nosuchkey=3")
    assert proc.returncode == 2 and "nosuchkey" in proc.stderr and "Traceback" not in proc.stderr


def test_a_multirun_validates_every_job_before_running_any(tmp_path):
    proc = cli("-m", *ARGS, "sampler.num_iter=4,0,300", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "2 of the 3 jobs" in proc.stderr and "sampler.num_iter=0" in proc.stderr
    assert "sampler.num_iter=300" in proc.stderr
    assert not list(tmp_path.glob("*/samples"))  # job 0, which is valid, did not start either


def test_a_failing_multirun_job_does_not_drop_the_others(tmp_path):
    proc = cli("-m", *ARGS, "model.init=pretrained,random", f"model.weights.path={tmp_path / 'none.pth'}",
               f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "job 0" in proc.stderr and "none.pth" in proc.stderr and f"hydra.sweep.dir={tmp_path}" in proc.stderr
    )
    assert read_metrics(tmp_path / "1")["meta/num_images"] == N


class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_an_unsafe_legacy_pickle_is_refused_by_name_not_called_corrupted(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(
        {"model": {"w": torch.zeros(2)}, "extra": _Payload()}, path, _use_new_zipfile_serialization=False
    )
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "refuses" in message and "print" in message
    assert "corrupted" not in message and "weights_only=False" not in message
