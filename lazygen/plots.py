"""The speed-quality trade-off as papers draw it: ``pareto.png`` / ``.svg`` of a comparison.

Four panels: FLOP speedup (left) and wall-clock speedup (right) against FID with its bootstrap error
(top) and PSNR against the same-seed baseline (bottom). One marker per method, the Pareto front (faster
and better than every other point) drawn as a step line, the baseline a black star. Needs matplotlib
(``pip install 'lazygen[plots]'``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from lazygen.errors import LazygenError
from lazygen.metrics.quality import STANDARD_ERROR_SUFFIX

PLOT_FILES = ("pareto.png", "pareto.svg")
FID_KEY, LATENCY_KEY = "quality/fid", "perf/latency_s_per_img"
MARKERS = "osD^v<>pXhP*"
FIGURE_SIZE = (11, 8)
DPI = 150
LEGEND_DIGITS = 3  # significant digits of a float setting in a legend label
LEGEND_WRAP_CHARS = 36  # legend labels (a method's settings) are wrapped to fit the right margin


def pareto_front(points: list[tuple[float, float]], maximise_y: bool) -> list[int]:
    """Indices of the points no other point beats on both x (higher is better) and y, sorted by x."""
    sign = 1 if maximise_y else -1

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and sign * a[1] >= sign * b[1] and a != b

    front = [i for i, p in enumerate(points) if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])


def trade_off_points(rows: list[dict], names: list[str]) -> list[dict]:
    """Per run: name, FLOP and wall speedups against the first (baseline) row, FID ± error, PSNR."""
    base_latency = rows[0]["metrics"].get(LATENCY_KEY)
    # the baseline sits at 1x only where some run has FLOPs to compare (not with metrics.flops off)
    any_flops = any(row.get("flop_speedup") is not None for row in rows[1:])
    points = []
    for k, (row, name) in enumerate(zip(rows, names, strict=True)):
        m = row["metrics"]
        latency = m.get(LATENCY_KEY)
        points.append({
            "name": "baseline" if k == 0 else name,
            "baseline": k == 0,
            "flop_speedup": (1.0 if any_flops else None) if k == 0 else row.get("flop_speedup"),
            "wall_speedup": base_latency / latency if base_latency and latency else None,
            "fid": m.get(FID_KEY),
            "fid_se": m.get(FID_KEY + STANDARD_ERROR_SUFFIX),
            "psnr": None if k == 0 else row.get("psnr_vs_baseline"),
        })  # fmt: skip
    return points


QUALITY_AXES = (("fid", "FID (lower is better)", False), ("psnr", "PSNR vs same-seed baseline (dB)", True))


def short_setting(text: str) -> str:
    """A legend label with long floats rounded (``retain_ratio=0.98895514`` -> ``retain_ratio=0.989``); the
    tables keep the exact values."""

    def rounded(token: str) -> str:
        key, sep, value = token.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            return token
        return f"{key}{sep}{number:.{LEGEND_DIGITS}g}" if sep and "." in value else token

    return " ".join(rounded(t) for t in text.split(" "))


def plotted_metrics(points: list[dict]) -> list[tuple[str, str, bool]]:
    """The quality axes some point has a value for (a search without FID gets no empty FID row)."""
    shown = [m for m in QUALITY_AXES if any(p.get(m[0]) is not None for p in points)]
    return shown or list(QUALITY_AXES[:1])


def plot_pareto(points: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Write ``pareto.png`` and ``pareto.svg`` into ``out_dir``; returns their paths."""
    try:
        plt = _pyplot()
    except ImportError:
        raise LazygenError(
            "pareto.png needs matplotlib: pip install 'lazygen[plots]' (the comparison table was written)."
        ) from None
    metrics = plotted_metrics(points)
    fig, axes = plt.subplots(len(metrics), 2, figsize=FIGURE_SIZE, sharex="col", squeeze=False)
    panels = [("flop_speedup", "FLOP speedup"), ("wall_speedup", "wall-clock speedup")]
    names = [p["name"] for p in points]
    for col, (x_key, x_name) in enumerate(panels):
        x_known = any(p[x_key] is not None for p in points)
        for row, (y_key, y_label, maximise) in enumerate(metrics):
            ax = axes[row][col]
            shown = [p for p in points if p[x_key] is not None and p[y_key] is not None]
            for p in shown:
                k = names.index(p["name"])  # one marker and colour per name in every panel
                style = {"marker": "*", "color": "black", "s": 220} if p["baseline"] else {
                    "marker": MARKERS[k % len(MARKERS)], "color": f"C{k % 10}", "s": 70}  # fmt: skip
                ax.scatter(p[x_key], p[y_key], label=p["name"], zorder=3, **style)
                if y_key == "fid" and p["fid_se"]:
                    ax.errorbar(p[x_key], p[y_key], yerr=p["fid_se"], color="grey", capsize=3, zorder=2)
            if not shown:
                missing = y_key.upper() if x_known else x_name
                ax.text(0.5, 0.5, f"no {missing} in these runs", ha="center", va="center",
                        transform=ax.transAxes, color="grey")  # fmt: skip
            front = pareto_front([(p[x_key], p[y_key]) for p in shown], maximise)
            if len(front) > 1:  # the boundary of what the front dominates
                ax.step([shown[i][x_key] for i in front], [shown[i][y_key] for i in front],
                        where="post" if maximise else "pre", color="tab:red", alpha=0.6, label="Pareto front")  # fmt: skip
            ax.set_ylabel(y_label)
            ax.grid(alpha=0.3)
            if row == len(metrics) - 1:
                ax.set_xlabel(f"{x_name} (×)")
    legend: dict[str, object] = {}
    for ax in (a for row in axes for a in row):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    # long settings are rounded and wrapped to stay in the right margin
    labels = [textwrap.fill(short_setting(label), LEGEND_WRAP_CHARS) for label in legend]
    fig.legend(list(legend.values()), labels, loc="center right", fontsize="small", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.74, 0.96))
    paths = [out_dir / name for name in PLOT_FILES]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recompute_heatmap(by_layer_step: dict[str, list[float]], path: Path, title: str) -> Path | None:
    """``cache.png``: the share of each layer's work recomputed at each step (1 = computed in full), or
    None when matplotlib is missing or nothing was reused."""
    import numpy as np

    layers = list(by_layer_step)
    steps = max((len(v) for v in by_layer_step.values()), default=0)
    if not layers or not steps:
        return None
    grid = np.full((len(layers), steps), np.nan)
    for i, layer in enumerate(layers):
        grid[i, : len(by_layer_step[layer])] = by_layer_step[layer]
    if np.nanmin(grid) >= 1.0:
        return None  # every step in full: nothing to show
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(max(6, steps * 0.15), max(3, len(layers) * 0.3)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers, fontsize="small")
    ax.set_xlabel("step")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share recomputed")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
