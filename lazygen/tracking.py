"""Experiment tracking: W&B (online, offline or disabled), a CSV file, or nothing.

Logging happens once per job from the main process, after the samples are written: ``metrics.json`` is
the source of truth, and the tracker mirrors it (plus the resolved config and an image grid). Each job
opens and finishes its own W&B run, so every job of a Hydra multirun is its own run.
"""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path
from typing import Any

import numpy as np

from lazygen.config import LoggerConf

WANDB_HOST = "api.wandb.ai"


def wandb_mode(requested: str) -> str:
    """``auto`` means online only when credentials exist; a fresh offline machine logs offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators(WANDB_HOST):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def log_run(
    conf: LoggerConf,
    run_dir: Path,
    name: str,
    group: str,
    job_type: str,
    config: dict[str, Any],
    metrics: dict[str, float],
    grid: np.ndarray | None,
    tags: list[str],
) -> str | None:
    """Mirror a finished job's metrics to the configured tracker; returns the W&B mode used, if any."""
    if conf.kind == "csv":
        path = run_dir / "metrics.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "value"])
            writer.writerows(sorted(metrics.items()))
        return None
    if conf.kind != "wandb":
        return None
    mode = wandb_mode(conf.mode)
    if mode == "disabled":
        return mode
    import wandb

    run = wandb.init(
        project=conf.project,
        entity=conf.entity,
        name=name,
        group=group,
        job_type=job_type,
        tags=tags,
        config=config,
        dir=str(run_dir),
        mode=mode,
        reinit="finish_previous",
    )
    try:
        run.log(dict(metrics))
        for key, value in metrics.items():
            run.summary[key] = value
        if grid is not None:
            run.log({"samples/grid": wandb.Image(grid)})
    finally:
        run.finish()
    return mode
