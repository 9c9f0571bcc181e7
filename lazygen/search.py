"""The outcome of a multi-objective search: its Pareto set as a table and a plot (a Hydra callback).

Every finished trial of the sweep dir is read back from its ``metrics.json``; a trial is on the front when
no other trial is at least as good on both objectives (both maximised, as the search presets ask) and
better on one. Written next to the jobs: ``search_front.md``, ``search_front.json`` and ``pareto.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lazygen.compare import distinct_settings
from lazygen.errors import LazygenError
from lazygen.plots import pareto_front, plot_pareto
from lazygen.run import METRICS_FILE

FRONT_TABLE, FRONT_ROWS = "search_front.md", "search_front.json"


def trials(sweep_dir: Path, objectives: list[str]) -> list[dict]:
    """Each finished trial: its overrides and objective values."""
    found = []
    for metrics_file in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")):
        metrics = json.loads(metrics_file.read_text())
        if not all(k in metrics for k in objectives):
            continue
        overrides = metrics_file.parent / ".hydra" / "overrides.yaml"
        swept = yaml.safe_load(overrides.read_text()) if overrides.exists() else [metrics_file.parent.name]
        found.append({"run": str(metrics_file.parent), "overrides": " ".join(swept), "metrics": metrics,
                      "values": [metrics[k] for k in objectives]})  # fmt: skip
    return found


def front_table(rows: list[dict], objectives: list[str], front: list[int]) -> str:
    lines = [
        "| on front | settings | " + " | ".join(objectives) + " |",
        "|---|---|" + "---|" * len(objectives),
    ]
    order = sorted(range(len(rows)), key=lambda i: (i not in front, -rows[i]["values"][0]))
    settings = distinct_settings([r["overrides"] for r in rows])  # only what the trials vary
    for i in order:
        values = " | ".join(f"{v:.3f}" for v in rows[i]["values"])
        lines.append(f"| {'yes' if i in front else ''} | {settings[i]} | {values} |")
    return "\n".join(lines)


def write_front(sweep_dir: Path, objectives: list[str]) -> list[dict]:
    rows = trials(sweep_dir, objectives)
    if not rows:
        raise LazygenError(f"{sweep_dir} holds no finished trial reporting {objectives}.")
    front = pareto_front([tuple(r["values"][:2]) for r in rows], maximise_y=True)
    for i, row in enumerate(rows):
        row["on_front"] = i in front
    table = front_table(rows, objectives, front)
    (sweep_dir / FRONT_TABLE).write_text(table + "\n")
    (sweep_dir / FRONT_ROWS).write_text(json.dumps(rows, indent=2))
    names = distinct_settings([r["overrides"] for r in rows])
    points = [{"name": name if r["on_front"] else "other trials", "baseline": False,
               "flop_speedup": r["metrics"].get("flops/speedup"), "wall_speedup": r["metrics"].get("perf/speedup"),
               "fid": r["metrics"].get("quality/fid"), "fid_se": r["metrics"].get("quality/fid_se"),
               "psnr": r["metrics"].get("quality/psnr_vs_baseline")} for r, name in zip(rows, names, strict=True)]  # fmt: skip
    try:
        plot_pareto(points, sweep_dir, f"{sweep_dir.name}: {len(rows)} trials, {len(front)} on the front")
    except LazygenError as exc:
        print(f"lazygen: {exc}", file=sys.stderr)
    print(f"\n{table}\n\n(written to {sweep_dir / FRONT_TABLE})")
    return rows


class SearchFront(Callback):
    """``hydra.callbacks.front`` of the ``hparams_search`` presets."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # the study's sqlite file lives there

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        objectives = list(config.get("objectives") or [])
        try:
            write_front(Path(config.hydra.sweep.dir), objectives)
        except LazygenError as exc:
            print(f"lazygen: no search front: {exc}", file=sys.stderr)
