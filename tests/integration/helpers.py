"""Running lazygen the way users do: the real CLI in a subprocess, or the composed config in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]
# A fast tiny configuration: few steps, few diffusion steps, no tracker.
FAST = [
    "model=tiny_mar",
    "sampler.num_iter=4",
    "sampler.diffusion_steps=5",
    "data.batch_size=2",
    "logger=none",
    "callbacks.progress_bar=false",
    "metrics.speedup.enabled=false",
]
CLI_TIMEOUT_S = 600


def cli(
    *overrides: str, env: dict | None = None, timeout: int = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess:
    merged = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in merged.items() if v is not None}  # None removes a variable
    return subprocess.run(
        [sys.executable, "-m", "lazygen", *overrides],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def compose_cfg(*overrides: str) -> DictConfig:
    import lazygen.config  # noqa: F401  (stores the schemas' base options the YAMLs build on)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def official_model(fixture: dict, device="cpu"):
    """The MAR of a parity fixture: its official constructor arguments, its weights loaded strictly."""
    from lazygen.models.mar import MAR, MARArch

    net = MAR(MARArch(**dict(fixture["config"]))).eval()
    net.load_state_dict(fixture["state_dict"], strict=True)
    return net.to(device)


def rel_err(a, b) -> float:
    """Max absolute error relative to the reference's peak (official samples are large, |x| ~ 1e4), on the
    CPU (the fixtures live there)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).abs().max() / b.abs().max())


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
