"""Experiment tracking: W&B (online, offline or disabled), a CSV file, or nothing.

Logging happens once per job from the main process, after the samples are written: ``metrics.json`` is
the source of truth, and the tracker mirrors it (plus the resolved config and an image grid). Each job
opens and finishes its own W&B run, so every job of a Hydra multirun is its own run.
"""

from __future__ import annotations

import csv
import netrc
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from lazygen.config import LoggerConf

WANDB_HOST = "api.wandb.ai"
WANDB_PORT = 443
PROBE_TIMEOUT_S = 3.0


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators(WANDB_HOST))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable() -> bool:
    try:
        socket.create_connection((WANDB_HOST, WANDB_PORT), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def wandb_mode(requested: str) -> str:
    """``auto``: online only with credentials and a reachable server, else offline (sync later)."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_credentials() and _reachable() else "offline"


def log_comparison(
    conf: LoggerConf, sweep_dir: Path, rows: list[dict], names: list[str], plots: list[Path], group: str
) -> str | None:
    """The comparison as a W&B table with a scatter chart of FLOP speedup against FID (and the Pareto
    plot), in its own run of the sweep's group; offline runs keep them for ``wandb sync``."""
    if conf.kind != "wandb":
        return None
    mode = wandb_mode(conf.mode)
    if mode == "disabled":
        return mode
    import wandb

    columns = ["run", "flop_speedup", "psnr_vs_baseline", "fid", "fid_se", "class_acc", "tflops_per_img",
               "latency_s_per_img"]  # fmt: skip
    data = [[name if k else "baseline", row.get("flop_speedup"), row.get("psnr_vs_baseline") if k else None,
             row["metrics"].get("quality/fid"), row["metrics"].get("quality/fid_se"),
             row["metrics"].get("quality/class_acc"), row["metrics"].get("flops/tflops_per_img"),
             row["metrics"].get("perf/latency_s_per_img")]
            for k, (row, name) in enumerate(zip(rows, names, strict=True))]  # fmt: skip
    run = wandb.init(project=conf.project, entity=conf.entity, name=f"{group}-comparison", group=group,
                     job_type="comparison", dir=str(sweep_dir), mode=mode, reinit="finish_previous")  # fmt: skip
    try:
        table = wandb.Table(columns=columns, data=data)
        run.log({"comparison": table,
                 "comparison/speedup_vs_fid": wandb.plot.scatter(table, "flop_speedup", "fid",
                                                                 title="FLOP speedup vs FID"),
                 "comparison/speedup_vs_psnr": wandb.plot.scatter(table, "flop_speedup", "psnr_vs_baseline",
                                                                  title="FLOP speedup vs PSNR")})  # fmt: skip
        for path in plots:
            if path.suffix == ".png":
                run.log({"comparison/pareto": wandb.Image(str(path))})
    finally:
        run.finish()
    return mode


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
    curves: dict[str, list[float]] | None = None,
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
        for key, values in (curves or {}).items():  # per-step series, e.g. the share recomputed
            table = wandb.Table(columns=["step", key], data=[[i, v] for i, v in enumerate(values)])
            run.log({key: wandb.plot.line(table, "step", key, title=key)})
    finally:
        run.finish()
    return mode
