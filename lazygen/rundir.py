"""A run directory's safety on resume: its settings cannot drift, only one process writes it, damage is redone.

- ``settings.json`` records the resolved settings that determine the samples (model, sampler, cache, seed,
  which samples, numerics). A rerun into the same directory with different ones is refused, naming the
  keys, because it would mix two runs' images and report one run's metrics under the other's settings.
  Keys that cannot change a sample (logger, metrics, callbacks, paths) may differ.
- ``.lazygen.lock`` holds the PID and host of the process generating into the directory; a second one is
  refused, and a lock whose process is gone (a kill -9) is taken over.
- Finished samples are checked before they are trusted: a PNG that does not decode or a latent that does
  not load is deleted and generated again.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lazygen.callbacks.writer import FEATURES_DIR, LATENTS_DIR, feature_file, sample_png
from lazygen.errors import ConfigError, LazygenError

SETTINGS_FILE = "settings.json"
LOCK_FILE = ".lazygen.lock"
# top-level config groups and keys whose every value can change a sample
SAMPLE_GROUPS = ("model", "sampler", "cache")
SAMPLE_KEYS = (
    "seed",
    "data.num_images",
    "data.labels",
    "data.seed",
    "hardware.accelerator",
    "hardware.precision",
)
# with the official RNG protocol the streams are seeded per batch and sharded per rank
OFFICIAL_RNG_KEYS = ("data.batch_size", "hardware.devices", "hardware.num_nodes")
MAX_LISTED_KEYS = 8


def is_worker_process() -> bool:
    """True in the re-executed ranks of a subprocess DDP launch: rank 0 owns the directory."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def sample_settings(resolved: dict) -> dict[str, Any]:
    """The flattened settings of a resolved run config that determine its samples."""
    flat = _flatten(resolved)
    keys = list(SAMPLE_KEYS)
    if flat.get("sampler.rng") == "official":
        keys += OFFICIAL_RNG_KEYS
    return {k: v for k, v in sorted(flat.items()) if k.split(".")[0] in SAMPLE_GROUPS or k in keys}


def check_settings(run_dir: Path, settings: dict[str, Any], has_samples: bool) -> None:
    """Record ``settings`` while the run has no samples; once it has, refuse a resume whose settings differ."""
    path = run_dir / SETTINGS_FILE
    if not path.exists() or not has_samples:
        path.write_text(json.dumps(settings, indent=2, sort_keys=True))
        return
    recorded = json.loads(path.read_text())
    differ = sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))
    if not differ:
        return
    shown = ", ".join(f"{k}: {recorded.get(k, '(unset)')!r} -> {settings.get(k, '(unset)')!r}"
                      for k in differ[:MAX_LISTED_KEYS])  # fmt: skip
    more = f" and {len(differ) - MAX_LISTED_KEYS} more" if len(differ) > MAX_LISTED_KEYS else ""
    raise ConfigError(
        f"{run_dir} belongs to a run with other settings ({shown}{more}), so resuming it would mix its "
        "samples and metrics with this run's. Start a new run directory (drop hydra.run.dir, or point it "
        f"somewhere new), or rerun with the recorded settings (in {path}) to resume."
    )


@dataclass
class RunLock:
    """An exclusive claim on a run directory by this process; stale claims of dead processes are taken."""

    run_dir: Path

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # gone, or cut short by a kill: nobody holds it

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _stale(holder, me):
                    raise ConfigError(
                        f"Another lazygen process (PID {holder.get('pid')} on {holder.get('host')}) is generating "
                        f"into {self.run_dir}; two processes would both generate every sample. Wait for it to "
                        "finish or stop it, or give this run another hydra.run.dir. If that process no longer "
                        f"exists (its machine went down), delete {self.path} and rerun."
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise LazygenError(
            f"Could not claim {self.run_dir}: {self.path} keeps reappearing; rerun the command."
        )

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _stale(holder: dict, me: dict) -> bool:
    """Whether a lock's holder is this process or a process of this host that no longer runs."""
    if holder.get("host") != me["host"]:
        return False  # another machine's process cannot be checked from here
    pid = int(holder.get("pid", -1))
    if pid == me["pid"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by someone else
    return False


EXTRACTOR_FILE = "extractor.txt"


def keep_features_of(run_dir: Path, extractor: str) -> None:
    """Stored quality features are valid for the extractor that made them: another one discards them."""
    import shutil

    folder = run_dir / FEATURES_DIR
    marker = folder / EXTRACTOR_FILE
    if folder.exists() and (not marker.exists() or marker.read_text() != extractor):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(extractor)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, ValueError, SyntaxError):  # PIL's errors for truncated or foreign files
        return False


def _loads(path: Path) -> bool:
    try:
        np.load(path, allow_pickle=False)
        return True
    except (OSError, ValueError, EOFError):
        return False


def intact_indices(run_dir: Path, indices: set[int], latents: bool) -> tuple[set[int], list[int]]:
    """(the indices whose files are sound, the damaged ones, whose files are deleted to be redone)."""
    damaged = []
    for index in sorted(indices):
        png = sample_png(run_dir, index)
        npy = run_dir / LATENTS_DIR / f"{index:06d}.npy"
        if _decodes(png) and (not latents or _loads(npy)):
            continue
        damaged.append(index)
        for path in (png, npy, feature_file(run_dir, index)):
            path.unlink(missing_ok=True)
    return indices - set(damaged), damaged
