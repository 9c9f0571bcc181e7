"""A cache policy from the user's own module is selectable from the command line without editing lazygen."""

from __future__ import annotations

import os

from helpers import FAST, REPO, cli, read_metrics

PLUGIN_ENV = {"LAZYGEN_PLUGINS": "teacache_policy",
              "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
ARGS = [
    *FAST,
    "data.num_images=2",
    "sampler.num_iter=8",
    "hardware.num_threads=1",
    "metrics.flops.enabled=false",
]


def test_an_out_of_tree_policy_runs_from_the_command_line_and_skips_steps(tmp_path):
    proc = cli(
        *ARGS, "cache=teacache_test", "cache.threshold=0.5", f"hydra.run.dir={tmp_path}", env=PLUGIN_ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["cache/reused_steps"] > 0 and metrics["cache/full_steps"] >= 1
    assert metrics["cache/full_steps"] + metrics["cache/reused_steps"] == 8


def test_at_threshold_zero_it_reuses_nothing(tmp_path):
    proc = cli(*ARGS, "cache=teacache_test", "cache.threshold=0", f"hydra.run.dir={tmp_path}", env=PLUGIN_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(tmp_path)["cache/reused_steps"] == 0


def test_without_the_plugin_the_option_is_a_clear_error():
    proc = cli(*ARGS, "cache=teacache_test")
    assert proc.returncode == 2 and "teacache_test" in proc.stderr and "Traceback" not in proc.stderr


def test_a_plugin_module_that_does_not_import_is_a_clear_error():
    proc = cli(*ARGS, env={"LAZYGEN_PLUGINS": "no_such_module_here"})
    assert proc.returncode == 2 and "LAZYGEN_PLUGINS" in proc.stderr and "Traceback" not in proc.stderr
