"""``python -m lazygen``: the Hydra entry point.

Configs live in the top-level ``conf/`` of a checkout; an installed wheel carries the same files as the
package ``lazygen.conf``. User mistakes end with one clear paragraph and exit code 2, not a traceback.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

import lazygen.config  # noqa: F401  (stores the schemas' base options the YAMLs build on)
from lazygen.errors import ConfigWarning, LazygenError
from lazygen.registry import load_components

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


@dataclass
class _Session:
    """What the process learned while Hydra ran: which signal stopped it, which multirun jobs failed."""

    signal: int | None = None
    failed_jobs: list[str] = field(default_factory=list)
    sweep_dir: str | None = None


_SESSION = _Session()
INTERRUPT_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as shells report it
# errors of the file system that the user can fix: full disk, permissions, a path that is a file
USER_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                  errno.ENOTDIR, errno.EISDIR}  # fmt: skip


def _on_signal(signum: int, frame) -> None:
    """SIGINT and SIGTERM both stop the run the same way: a KeyboardInterrupt Lightning shuts down on."""
    _SESSION.signal = signum
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in INTERRUPT_EXIT:
            signal.signal(signum, _on_signal)


def resume_command(run_dir: str) -> str:
    """The command that continues this job in its run directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return " ".join(
        ["python -m lazygen", *map(shlex.quote, overrides), shlex.quote(f"hydra.run.dir={run_dir}")]
    )


def io_error(exc: OSError, run_dir: str | None = None) -> LazygenError:
    where = f" Samples finished so far are kept in {run_dir}." if run_dir else ""
    return LazygenError(
        f"lazygen could not write {exc.filename or 'a file'}: {exc.strerror}.{where} Free disk space, make the "
        "directory writable, or choose another hydra.run.dir (a directory, not a file), then rerun the same "
        "command to resume."
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    show_config_warnings()
    install_signal_handlers()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    _SESSION.sweep_dir = hc.sweep.dir if multirun else None
    try:
        from lazygen.run import run_job

        metrics = run_job(cfg, run_dir, group=group)
    except (KeyboardInterrupt, SystemExit):
        if _SESSION.signal is None:
            raise
        Console(stderr=True).print(
            f"[bold yellow]lazygen stopped[/] by {signal.Signals(_SESSION.signal).name}. Finished samples are kept; "
            f"resume with: {resume_command(run_dir)}", highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(INTERRUPT_EXIT[_SESSION.signal])
    except (LazygenError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in USER_IO_ERRNOS:
            raise
        error = io_error(exc, run_dir) if isinstance(exc, OSError) else exc
        if not multirun:
            exit_with_user_error(error)
        Console(stderr=True).print(f"[bold red]lazygen error (job {hc.job.num}, the others go on):[/] {error}",
                                   highlight=False, soft_wrap=True)  # fmt: skip
        _SESSION.failed_jobs.append(f"job {hc.job.num} ({' '.join(hc.overrides.task)})")
        return None
    if metrics:
        print_summary(metrics, run_dir)
    return objective_values(cfg, metrics)


def objective_values(cfg: DictConfig, metrics: dict[str, float]) -> float | list[float] | None:
    """What a job returns to the sweeper: the ``objectives`` metrics (a search), else FID."""
    keys = cfg.get("objectives")
    if not metrics:
        return None
    if not keys:
        return metrics.get("quality/fid")
    missing = [k for k in keys if k not in metrics]
    if missing:
        exit_with_user_error(LazygenError(
            f"objectives={list(keys)} names metrics this run did not report ({missing}); enable what measures "
            "them (e.g. metrics.speedup.enabled=true for perf/speedup and quality/psnr_vs_baseline, a cache "
            "or sampler that differs from the baseline for flops/speedup) or pick reported keys."))  # fmt: skip
    values = [float(metrics[k]) for k in keys]
    return values if len(values) > 1 else values[0]


def main() -> None:
    """The console entry point: Hydra's errors and every user mistake exit 2 with one paragraph."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises; the handlers below report
    try:
        load_components()  # before composing: plugin components (LAZYGEN_PLUGINS) become config options
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        exit_with_user_error(LazygenError(str(exc)))
    except LazygenError as exc:
        exit_with_user_error(exc)
    except OSError as exc:
        if exc.errno not in USER_IO_ERRNOS:
            raise
        exit_with_user_error(io_error(exc))
    if _SESSION.failed_jobs:
        exit_with_user_error(LazygenError(
            f"Jobs of this multirun that failed (the others ran): "
            f"{'; '.join(_SESSION.failed_jobs)}. Their errors are printed above; fix the cause and rerun the same "
            f"command with hydra.sweep.dir={_SESSION.sweep_dir} to resume them (finished jobs are kept)."))  # fmt: skip


if __name__ == "__main__":
    main()
