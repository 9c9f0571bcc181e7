"""``python -m lazygen``: the Hydra entry point.

Configs live in the top-level ``conf/`` of a checkout; an installed wheel carries the same files as the
package ``lazygen.conf``. User mistakes end with one clear paragraph and exit code 2, not a traceback.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lazygen.errors import ConfigWarning, LazygenError

USER_ERROR_EXIT = 2
_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
CONFIG_PATH = str(_CHECKOUT_CONF) if (_CHECKOUT_CONF / "config.yaml").exists() else "pkg://lazygen.conf"


# The console shows the headline numbers; metrics.json (and W&B) has every key.
SUMMARY_KEYS = (
    "meta/num_images", "perf/latency_s_per_img", "perf/throughput_img_per_s", "flops/tflops_per_img",
    "quality/fid", "quality/is_mean", "quality/class_acc", "perf/speedup", "flops/speedup",
    "quality/psnr_vs_baseline", "cache/recompute_frac", "cache/full_steps", "cache/attended_frac",
    "mem/kv_cache_bytes_per_img", "mem/peak_bytes",
)  # fmt: skip


def exit_with_user_error(exc: LazygenError) -> None:
    """One red paragraph on stderr and exit code 2: a user mistake, not a crash (no traceback)."""
    Console(stderr=True).print(f"[bold red]lazygen error:[/] {exc}", highlight=False, soft_wrap=True)
    sys.exit(USER_ERROR_EXIT)


def show_config_warnings() -> None:
    """Show :class:`ConfigWarning` as one yellow paragraph (no file and line: it is about the config).
    Installed once per process (a multirun calls the entry point once per job)."""
    default = warnings.showwarning
    if getattr(default, "lazygen", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, ConfigWarning):
            Console(stderr=True).print(f"[bold yellow]lazygen warning:[/] {message}", highlight=False,
                                       soft_wrap=True)  # fmt: skip
        else:
            default(message, category, filename, lineno, file, line)

    show.lazygen = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", ConfigWarning)


def print_summary(metrics: dict[str, float], run_dir: str) -> None:
    table = Table(
        title=f"lazygen: {run_dir}", caption="all metrics: metrics.json; images: grid.png, samples/"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_KEYS:
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4g}")
    Console(stderr=True).print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    show_config_warnings()
    run_dir = hc.runtime.output_dir
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    try:
        from lazygen.run import run_job

        metrics = run_job(cfg, run_dir, group=group)
    except LazygenError as exc:
        exit_with_user_error(exc)
    if metrics:
        print_summary(metrics, run_dir)
    return metrics.get("quality/fid") if metrics else None


if __name__ == "__main__":
    main()
