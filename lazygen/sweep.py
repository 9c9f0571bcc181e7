"""Multirun checks that run once, in the launching process, before any job (a Hydra callback).

Every job of the sweep (the basic sweeper's expansion of the command line and ``hydra.sweeper.params``) is
composed and validated first, so a bad value in job 7 is reported before jobs 0-6 spend hours, and with
every other bad job in the same paragraph. Launchers that run jobs elsewhere (submitit) are covered too:
the check runs where the sweep starts.
"""

from __future__ import annotations

import warnings
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lazygen.errors import ConfigError, ConfigWarning, LazygenError


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, or None for a sweeper that chooses its jobs as it goes (e.g. Optuna)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    node = sweeper.get("params")
    params = [f"{k}={v}" for k, v in OmegaConf.to_container(node).items()] if node else []
    parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def validate_jobs(jobs: list[list[str]]) -> None:
    """Compose and validate every job; one ConfigError lists each invalid one by what sets it apart."""
    from hydra import compose

    from lazygen.config import validate

    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # each job shows its own when it runs
        for num, job in enumerate(jobs):
            try:
                validate(
                    compose(config_name="config", overrides=[o for o in job if not o.startswith("hydra.")])
                )
            except (LazygenError, HydraException, OmegaConfBaseException) as exc:
                swept = [o for o in job if any(o not in other for other in jobs)]
                problems.append(f"job {num} ({' '.join(swept)}): {exc}")
    if problems:
        raise ConfigError(
            f"{len(problems)} of the {len(jobs)} jobs of this multirun are invalid, so none was started. "
            + " ".join(problems)
            + " Fix or drop those values and rerun."
        )


class ValidateSweep(Callback):
    """``hydra.callbacks.validate_sweep`` (conf/config.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lazygen.cli import exit_with_user_error

        jobs = sweep_jobs(config)
        try:
            if jobs:
                validate_jobs(jobs)
        except LazygenError as exc:  # Hydra turns a callback's exceptions into warnings: exit here
            exit_with_user_error(exc)
