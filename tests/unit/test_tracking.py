"""W&B mode selection: offline unless credentials exist and the server answers."""

from __future__ import annotations

import lazygen.tracking as tracking


def test_explicit_mode_wins(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert tracking.wandb_mode("disabled") == "disabled"


def test_auto_without_credentials_is_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr(tracking, "_reachable", lambda: True)
    assert tracking.wandb_mode("auto") == "offline"


def test_auto_with_credentials_but_no_network_is_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "_reachable", lambda: False)
    assert tracking.wandb_mode("auto") == "offline"
    monkeypatch.setattr(tracking, "_reachable", lambda: True)
    assert tracking.wandb_mode("auto") == "online"


def test_csv_logger_writes_metrics(tmp_path):
    conf = tracking.LoggerConf(kind="csv")
    tracking.log_run(conf, tmp_path, "n", "g", "baseline", {}, {"perf/speedup": 2.0}, None, [])
    assert "perf/speedup,2.0" in (tmp_path / "metrics.csv").read_text()
