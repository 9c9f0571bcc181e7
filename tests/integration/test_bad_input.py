"""Bad input ends with one clear message naming the problem and the fix, and a non-zero exit."""

from __future__ import annotations

import pytest
import torch
from helpers import FAST, cli, compose_cfg

from lazygen.build import build_model
from lazygen.config import validate
from lazygen.errors import CheckpointError, ConfigError
from lazygen.run import run_job


def _run(tmp_path, *overrides: str) -> None:
    run_job(compose_cfg(*FAST, "data.num_images=1", *overrides), tmp_path / "run")


def test_unknown_model_name_exits_nonzero_with_choices():
    proc = cli("model=mar_xxl")
    assert proc.returncode != 0
    assert "mar_xxl" in proc.stderr and "mar_b" in proc.stderr  # Hydra lists the available options
    assert "Traceback" not in proc.stderr


def test_unknown_sampler_name_exits_nonzero():
    proc = cli("sampler=nope")
    assert proc.returncode != 0 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_cfg_below_one_is_a_clear_cli_error():
    proc = cli(*FAST, "sampler.cfg=0.5")
    assert proc.returncode == 2
    assert "sampler.cfg=0.5" in proc.stderr and "1.0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("num_iter", [0, 257])
def test_num_iter_out_of_range(num_iter):
    with pytest.raises(ConfigError, match=rf"sampler.num_iter={num_iter} is out of range.*between 1 and 256"):
        validate(compose_cfg(*FAST, f"sampler.num_iter={num_iter}"))


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="data.num_images"):
        validate(compose_cfg(*FAST, "data.num_images=many"))


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        _run(tmp_path, "model.init=pretrained", f"model.weights.path={missing}")


def test_checkpoint_of_another_shape_names_the_first_mismatching_keys(tmp_path):
    run = validate(compose_cfg(*FAST))
    state = build_model(run.model).state_dict()
    state["z_proj.weight"] = torch.zeros(3, 3)
    del state["fake_latent"]
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path, "model.init=pretrained", f"model.weights.path={path}")
    assert "z_proj.weight" in str(info.value) and "fake_latent" in str(info.value)


def test_corrupted_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="broken.pth"):
        _run(tmp_path, "model.init=pretrained", f"model.weights.path={path}")


def test_pretrained_checkpoint_round_trip_loads_strictly(tmp_path):
    run = validate(compose_cfg(*FAST))
    model = build_model(run.model)
    path = tmp_path / "good.pth"
    torch.save({"model_ema": model.state_dict(), "model": {}}, path)
    loaded = build_model(
        validate(compose_cfg(*FAST, "model.init=pretrained", f"model.weights.path={path}")).model
    )
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_preset_on_a_cpu_machine_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="hardware=cpu"):
        _run(tmp_path, "hardware=gpu")


def test_one_diffusion_step_is_rejected():
    with pytest.raises(ConfigError, match="sampler.diffusion_steps=1 must be between 2 and 1000"):
        validate(compose_cfg(*FAST, "sampler.diffusion_steps=1"))
