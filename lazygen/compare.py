"""``python -m lazygen.compare``: one table of finished runs against a baseline run.

Each run's ``metrics.json`` gives FLOPs, quality and latency; fidelity is measured here, per image, against
the baseline run's images of the same sample indices (same seeds and labels), over *all* images rather
than the few a run's own paired measurement uses. FID and class accuracy are also given as each run's
difference from the baseline, with a bootstrap error that resamples the same samples in both runs (the
runs share their seeds, so luck they share cancels). Give the baseline first, then the other runs, or one
multirun directory and the job number of its baseline:

    python -m lazygen.compare runs/generate/multirun/<time> --baseline 0
    python -m lazygen.compare runs/base runs/lazymar runs/steps32 --out table.json

A multirun preset can also ask for the table when its last job ends (``CompareTable``, a Hydra callback):
it is printed and written next to the jobs as ``comparison.md`` and ``comparison.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lazygen.errors import LazygenError
from lazygen.metrics.quality import CLASS_ACC_KEY, DIFF_SUFFIX, FID_KEY, STANDARD_ERROR_SUFFIX, psnr
from lazygen.run import METRICS_FILE, NPZ_FILE, PSNR_CAP_DB

MIB = 2**20
PAIRED_SEED = 0  # the paired bootstrap's resampling seed: the same table twice gives the same errors
COLUMNS = (  # (header, metrics key, format, scale)
    ("TFLOPs/img", "flops/tflops_per_img", "{:.4f}", 1),
    ("FID", "quality/fid", "{:.1f}", 1),
    ("IS", "quality/is_mean", "{:.2f}", 1),
    ("class acc", "quality/class_acc", "{:.3f}", 1),
    ("recompute", "cache/recompute_frac", "{:.3f}", 1),
    ("attended", "cache/attended_frac", "{:.3f}", 1),
    ("KV MiB/img", "mem/kv_cache_bytes_per_img", "{:.3f}", 1 / MIB),
    ("model calls/img", "perf/model_calls_per_img", "{:.1f}", 1),
    ("accept rate", "sampler/accept_rate", "{:.3f}", 1),
    ("s/img", "perf/latency_s_per_img", "{:.3f}", 1),
    ("wall speedup vs its baseline", "perf/speedup", "{:.2f}", 1),
)
PAIRED_COLUMNS = (  # (header, key in a row's "vs_baseline", format): paired differences from the baseline
    ("ΔFID vs baseline (paired)", FID_KEY + DIFF_SUFFIX, "{:+.1f}"),
    ("Δ class acc (paired)", CLASS_ACC_KEY + DIFF_SUFFIX, "{:+.3f}"),
)
NOISE_SE = 2.0  # a paired difference within this many standard errors is marked as noise


def _run_dirs(paths: list[Path], baseline: str | None) -> tuple[Path, list[Path]]:
    if len(paths) == 1 and not (paths[0] / METRICS_FILE).exists():
        jobs = sorted(
            (p for p in paths[0].iterdir() if (p / METRICS_FILE).exists()),
            key=lambda p: (len(p.name), p.name),
        )
        if not jobs:
            raise LazygenError(
                f"{paths[0]} holds no finished run (no {METRICS_FILE} in it or its subfolders)."
            )
        names = [p.name for p in jobs]
        if baseline is None or baseline not in names:
            raise LazygenError(
                f"{paths[0]} is a multirun with jobs {names}; name the baseline job with --baseline "
                "(e.g. --baseline 0, the job with cache=none at the full step count)."
            )
        base = jobs[names.index(baseline)]
        return base, [p for p in jobs if p != base]
    for p in paths:
        if not (p / METRICS_FILE).exists():
            raise LazygenError(
                f"{p} is not a finished run: it has no {METRICS_FILE}. Finish or resume it first."
            )
    if len(paths) < 2:
        raise LazygenError("Give a baseline run and at least one run to compare with it.")
    return paths[0], paths[1:]


def _overrides(run_dir: Path) -> str:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return run_dir.name
    return " ".join(yaml.safe_load(path.read_text()) or []) or "(defaults)"


def _samples(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    path = run_dir / NPZ_FILE
    if not path.exists():
        raise LazygenError(f"{run_dir} has no {NPZ_FILE}; rerun it with callbacks.save_npz=true.")
    data = np.load(path)
    return data["arr_0"], data["labels"]


def fidelity(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean PSNR (dB, capped) of images (N, H, W, 3) uint8 against the reference images of the same seeds."""
    a = torch.from_numpy(images).permute(0, 3, 1, 2)
    b = torch.from_numpy(reference).permute(0, 3, 1, 2)
    return float(psnr(a, b, cap_db=PSNR_CAP_DB).mean())


def _quality_run(run_dir: Path):
    """The run's validated config when it measured FID (quality on, a reference given); None when it
    measured none or has no config that loads (then it says so once)."""
    from lazygen.config import validate
    from lazygen.run import quality_settings

    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    try:
        run = validate(OmegaConf.load(path))
    except (LazygenError, OmegaConfBaseException, yaml.YAMLError) as exc:  # e.g. a run of an older lazygen
        print(f"lazygen: no paired quality differences for {run_dir}: its config does not load ({exc})",
              file=sys.stderr)  # fmt: skip
        return None
    enabled, _, reference = quality_settings(run)
    return run if enabled and reference else None


def _evaluator(run) -> tuple[str, str]:
    """(extractor, reference statistics) a run measured FID with: runs agreeing on both can be paired."""
    from lazygen.run import quality_settings

    return quality_settings(run)[1:]


class PairedQuality:
    """FID and class accuracy of each run minus the baseline's, with paired bootstrap errors (the same
    sample rows resampled in both runs); off when the runs measured FID differently or not at all. Class
    accuracy is paired only where the runs report it (the extractor classifies the generator's classes)."""

    def __init__(self, base_dir: Path, labels: np.ndarray) -> None:
        base_run = _quality_run(base_dir)
        self.base = None
        if base_run is not None:
            from lazygen.metrics.quality import QualityMeter
            from lazygen.run import fid_reference, judges_classes, make_extractor

            self.evaluator = _evaluator(base_run)
            extractor = make_extractor(self.evaluator[0], None)
            self.meter = QualityMeter(extractor, reference_stats=fid_reference(base_run, None))
            self.judge = judges_classes(base_run, extractor)
            self.base = self._inputs(base_dir, labels)

    def _inputs(self, run_dir: Path, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample FID features (N, F) and class hits (N,) or None of a run: the features its generating
        ranks kept, the rest extracted from its images."""
        from lazygen.run import sample_features

        features, logits = sample_features(self.meter, run_dir, list(range(len(labels))))
        hits = (logits.argmax(-1) == torch.from_numpy(labels)).double() if self.judge else None
        return features, hits

    def __call__(self, run_dir: Path, labels: np.ndarray) -> dict[str, float]:
        from lazygen.metrics.quality import DEFAULT_BOOTSTRAP, paired_differences

        if self.base is None:
            return {}
        run = _quality_run(run_dir)
        if run is None or _evaluator(run) != self.evaluator:
            return {}
        features, hits = self._inputs(run_dir, labels)
        agree = None if hits is None else (self.base[1], hits)
        return paired_differences(
            (self.base[0], features), agree, self.meter.reference, DEFAULT_BOOTSTRAP, PAIRED_SEED
        )


def compare(base_dir: Path, run_dirs: list[Path], paired: bool = True) -> list[dict]:
    """One row per run. ``paired``: also each run's FID and class accuracy minus the baseline's, with the
    paired bootstrap error (runs of quality-measured models only)."""
    base_images, base_labels = _samples(base_dir)
    base_metrics = json.loads((base_dir / METRICS_FILE).read_text())
    paired_quality = PairedQuality(base_dir, base_labels) if paired else None
    rows = []
    for run_dir in [base_dir, *run_dirs]:
        images, labels = _samples(run_dir)
        if images.shape != base_images.shape or not np.array_equal(labels, base_labels):
            raise LazygenError(
                f"{run_dir} did not generate the same samples as the baseline {base_dir} ({len(labels)} vs "
                f"{len(base_labels)} images, or other labels); compare runs made with the same data.* settings."
            )
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        row = {"run": str(run_dir), "overrides": _overrides(run_dir), "metrics": metrics}
        row["psnr_vs_baseline"] = fidelity(images, base_images) if run_dir != base_dir else PSNR_CAP_DB
        if paired_quality is not None and run_dir != base_dir:
            if paired := paired_quality(run_dir, labels):
                row["vs_baseline"] = paired
        if "flops/tflops_per_img" in metrics and "flops/tflops_per_img" in base_metrics:
            row["flop_speedup"] = base_metrics["flops/tflops_per_img"] / metrics["flops/tflops_per_img"]
        rows.append(row)
    return rows


def distinct_settings(overrides: list[str]) -> list[str]:
    """Each run's overrides without those every run shares (the table shows what differs)."""
    split = [o.split() for o in overrides]
    common = set.intersection(*(set(s) for s in split)) if len(split) > 1 else set()
    return [" ".join(o for o in s if o not in common) or "(shared settings)" for s in split]


def paired_cell(row: dict, key: str, fmt: str, is_baseline: bool) -> str:
    """``+3.1 ± 1.2`` for a paired difference; ``(noise)`` is added when it is within ``NOISE_SE`` errors."""
    paired = row.get("vs_baseline", {})
    if key not in paired:
        return "baseline" if is_baseline else "–"
    value, error = paired[key], paired.get(key + STANDARD_ERROR_SUFFIX)
    if error is None:
        return fmt.format(value)
    return f"{fmt.format(value)} ± {fmt.format(error).lstrip('+')}" + (
        " (noise)" if abs(value) <= NOISE_SE * error else ""
    )


def markdown(rows: list[dict]) -> str:
    """The table of :func:`compare`'s rows, the baseline first; a metric no run reports (e.g. KV memory for
    MAR) gets no column. A metric with a bootstrap standard error (FID, class accuracy) is shown as
    ``value ± error``."""
    columns = [c for c in COLUMNS if any(c[1] in r["metrics"] for r in rows)]
    deltas = [d for d in PAIRED_COLUMNS if any(d[1] in r.get("vs_baseline", {}) for r in rows)]
    header = [
        "run",
        *[c[0] for c in columns],
        *[d[0] for d in deltas],
        "FLOP speedup",
        "PSNR vs baseline (dB)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (row, name) in enumerate(
        zip(rows, distinct_settings([r["overrides"] for r in rows]), strict=True)
    ):
        cells = [name]
        for _, key, fmt, scale in columns:
            value, error = row["metrics"].get(key), row["metrics"].get(key + STANDARD_ERROR_SUFFIX)
            cell = fmt.format(value * scale) if value is not None else "–"
            if value is not None and error is not None:  # the bootstrap standard error, same format
                cell += " ± " + fmt.format(error * scale)
            cells.append(cell)
        cells += [paired_cell(row, key, fmt, is_baseline=i == 0) for _, key, fmt in deltas]
        cells.append(f"{row['flop_speedup']:.2f}×" if "flop_speedup" in row else "–")
        cells.append(
            f"{row['psnr_vs_baseline']:.2f}" if row["psnr_vs_baseline"] < PSNR_CAP_DB else "baseline"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE_FILE, ROWS_FILE = "comparison.md", "comparison.json"


def write_outputs(rows: list[dict], out_dir: Path, title: str) -> list[Path]:
    """The table (Markdown and JSON) and the Pareto plots in ``out_dir``; returns the plot paths (none
    without matplotlib, which is then said once)."""
    from lazygen.plots import plot_pareto, trade_off_points

    (out_dir / TABLE_FILE).write_text(markdown(rows) + "\n")
    (out_dir / ROWS_FILE).write_text(json.dumps(rows, indent=2))
    points = trade_off_points(rows, distinct_settings([r["overrides"] for r in rows]))
    try:
        return plot_pareto(points, out_dir, title)
    except LazygenError as exc:
        print(f"lazygen: {exc}", file=sys.stderr)
        return []


class CompareTable(Callback):
    """Hydra callback: after a multirun, the table of its jobs against job ``baseline``."""

    def __init__(self, baseline: str | int = 0) -> None:
        self.baseline = str(baseline)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            base, others = _run_dirs([sweep_dir], self.baseline)
            rows = compare(base, others)
        except LazygenError as exc:  # the jobs' own outputs are complete; only the table is missing
            print(f"lazygen: no comparison table for {sweep_dir}: {exc}", file=sys.stderr)
            return
        plots = write_outputs(rows, sweep_dir, f"{sweep_dir.name}: speed against quality")
        print(f"\n{markdown(rows)}\n\n(written to {sweep_dir / TABLE_FILE}{', pareto.png' if plots else ''})")
        from lazygen.config import LoggerConf, typed_group
        from lazygen.tracking import log_comparison

        logger = (
            typed_group("logger", LoggerConf, config.logger)
            if "logger" in config
            else LoggerConf(kind="none")
        )
        log_comparison(
            logger, sweep_dir, rows, distinct_settings([r["overrides"] for r in rows]), plots, sweep_dir.name
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="baseline run then others, or one multirun folder")
    parser.add_argument("--baseline", help="job number of the baseline inside a multirun folder")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--plot-dir", type=Path, help="write comparison.md/.json and pareto.png/.svg here "
                        "(default: the multirun folder, or the current folder for a list of runs)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        base, others = _run_dirs(args.runs, args.baseline)
        rows = compare(base, others)
    except LazygenError as exc:
        from lazygen.cli import exit_with_user_error

        exit_with_user_error(exc)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    out_dir = args.plot_dir or (args.runs[0] if len(args.runs) == 1 else Path.cwd())
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_outputs(rows, out_dir, f"{out_dir.resolve().name}: speed against quality"):
        print(f"(table and pareto.png in {out_dir})")


if __name__ == "__main__":
    main(sys.argv[1:])
