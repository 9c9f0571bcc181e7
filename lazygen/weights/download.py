"""Find a weight file locally or download it into the lazygen cache.

Resolution order: an explicit local path from the config, then the cached copy under the weights home,
then a download. Downloads use only the standard library (no ``requests`` dependency), stream into a
``.part`` file, are checked against the pinned size/sha256 and only then renamed into place, so an
interrupted or corrupted download never masquerades as a valid cached checkpoint.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lazygen.errors import CheckpointError, ConfigError
from lazygen.weights.registry import DOWNLOAD_HEADERS, WeightFile, get_weight_file

HOME_ENV_VAR = "LAZYGEN_HOME"
DEFAULT_HOME = Path("~/.cache/lazygen")
DEFAULT_CONFIG_KEY = "model.weights.path"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20  # 1 MiB: the reference download script's chunk size.
NETWORK_TIMEOUT_S = 60.0  # per blocking socket operation, not for the whole transfer.
HTML_CONTENT_TYPE = "text/html"  # a web page (login wall, error page) served instead of the file.


def weights_home() -> Path:
    """Root of the weight cache: ``$LAZYGEN_HOME`` if set, else ``~/.cache/lazygen``."""
    env = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_HOME.expanduser()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-GiB checkpoints do not need to fit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weight(
    name_or_none: str | WeightFile | None,
    local_path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    home: Path | None = None,
    verify_sha256: bool = False,
    config_key: str = DEFAULT_CONFIG_KEY,
) -> Path:
    """Return the path of a usable weight file, downloading it into the cache if needed.

    ``local_path`` (from the config) always wins and must exist. Otherwise ``name_or_none`` names a
    registry entry (or is a :class:`WeightFile`) whose cached copy is checked by size and, with
    ``verify_sha256``, by hash (off by default: hashing gigabytes on every run is slow). A fresh download
    is always verified against every checksum the entry pins. ``config_key`` is the setting that error
    messages tell the user to point at a manually placed file.
    """
    if local_path is not None and str(local_path) != "":
        return _check_local_path(Path(local_path).expanduser(), config_key)
    if name_or_none is None:
        raise ConfigError(
            f"No weights configured: neither a registry name nor a local file ({config_key}) is set. "
            f"Set {config_key}=/path/to/checkpoint, or choose an official checkpoint by name "
            "(e.g. model.weights.registry=mar_b)."
        )
    entry = name_or_none if isinstance(name_or_none, WeightFile) else get_weight_file(name_or_none)
    if entry.bundled:
        if entry.bundled_path.is_file():
            return entry.bundled_path
        raise CheckpointError(
            f"The file {entry.bundled_path} that lazygen ships for {entry.name!r} is missing from this "
            "installation. Reinstall lazygen (pip install -e . from a full checkout), or retrain it with "
            "`python -m lazygen.train ... export_dir=lazygen/assets` (see README), or set "
            f"{config_key} to a copy of the file."
        )
    dest = (home if home is not None else weights_home()) / entry.filename

    if dest.is_file():
        _verify_cached(entry, dest, verify_sha256=verify_sha256)
        return dest
    if not download:
        raise CheckpointError(
            f"Weight file {entry.name!r} is not in the cache at {dest} and downloading is disabled. "
            f"Download it from {entry.url} and save it as {dest}, set {config_key} to where the file "
            "already is, or enable downloading."
        )
    return download_weight(entry, dest, config_key=config_key)


def download_weight(entry: WeightFile, dest: Path, *, config_key: str = DEFAULT_CONFIG_KEY) -> Path:
    """Download ``entry`` to ``dest`` via ``dest.part``, verify it, and rename it into place atomically.

    Not safe for several processes downloading the same file at once: in distributed runs let one rank
    download and make the others wait.
    """
    part = dest.with_name(dest.name + PART_SUFFIX)
    manual_hint = (
        f"To install it by hand (e.g. on an offline machine), download {entry.url} and save it as {dest}, "
        f"or save it anywhere and set {config_key} to its path."
    )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create the weight cache directory {dest.parent} ({exc}). Point the environment "
            f"variable {HOME_ENV_VAR} at a writable directory, or set {config_key} to a local copy of "
            f"{entry.url}."
        ) from exc

    try:
        digest = _stream_to(entry, part, manual_hint)
        _check_download(entry, part, digest, manual_hint)
        os.replace(part, dest)
    except BaseException:
        # No resume support: a leftover .part would only be mistaken for progress, so always remove it.
        part.unlink(missing_ok=True)
        raise
    return dest


def _check_local_path(path: Path, config_key: str) -> Path:
    if path.is_file():
        return path
    problem = "is a directory, not a file" if path.is_dir() else "does not exist"
    raise CheckpointError(
        f"The checkpoint file {path} given by {config_key} {problem}. Fix {config_key} so it points "
        "to an existing checkpoint file, or remove it to use the official weights by name (they are "
        "downloaded into the lazygen cache automatically)."
    )


def _verify_cached(entry: WeightFile, dest: Path, *, verify_sha256: bool) -> None:
    """Reject a cached file that is incomplete or altered, before it is loaded as weights."""
    size = dest.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise CheckpointError(
            f"The cached weight file {dest} has {size} bytes but {entry.name!r} should have "
            f"{entry.size_bytes}; it is probably an incomplete download. Delete {dest} and run again to "
            f"re-download it from {entry.url}."
        )
    if verify_sha256 and entry.sha256 is not None:
        actual = sha256_of(dest)
        if actual != entry.sha256:
            raise CheckpointError(
                f"The cached weight file {dest} has sha256 {actual} but {entry.name!r} should have "
                f"{entry.sha256}; the file is corrupted or is a different release. Delete {dest} and run "
                f"again to re-download it from {entry.url}."
            )


def _network_error(entry: WeightFile, detail: str, manual_hint: str) -> CheckpointError:
    return CheckpointError(f"Downloading {entry.name!r} from {entry.url} failed: {detail}. {manual_hint}")


def _stream_to(entry: WeightFile, part: Path, manual_hint: str) -> str:
    """Stream the URL into ``part`` in 1 MiB chunks and return the sha256 of what was written."""
    request = urllib.request.Request(entry.url, headers=dict(DOWNLOAD_HEADERS))
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S) as response:
            content_type = response.headers.get("Content-Type", "") or ""
            if content_type.lower().startswith(HTML_CONTENT_TYPE):
                raise _network_error(
                    entry,
                    "the server returned a web page instead of the file (the link may have expired)",
                    manual_hint,
                )
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else entry.size_bytes
            written = 0
            with part.open("wb") as out, _progress() as progress:
                task = progress.add_task(f"{entry.name}", total=expected)
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    progress.update(task, advance=len(chunk))
            if length_header and length_header.isdigit() and written != int(length_header):
                raise _network_error(
                    entry, f"the connection closed after {written} of {length_header} bytes", manual_hint
                )
    except CheckpointError:
        raise
    except urllib.error.HTTPError as exc:
        raise _network_error(entry, f"HTTP {exc.code} {exc.reason}", manual_hint) from exc
    except urllib.error.URLError as exc:
        raise _network_error(entry, f"could not connect ({exc.reason})", manual_hint) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _network_error(entry, f"{type(exc).__name__}: {exc}", manual_hint) from exc
    return digest.hexdigest()


def _check_download(entry: WeightFile, part: Path, digest: str, manual_hint: str) -> None:
    size = part.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise CheckpointError(
            f"The download of {entry.name!r} from {entry.url} has {size} bytes but should have "
            f"{entry.size_bytes}; the partial file was removed. Run again to retry. {manual_hint}"
        )
    if entry.sha256 is not None and digest != entry.sha256:
        raise CheckpointError(
            f"The download of {entry.name!r} from {entry.url} has sha256 {digest} but should have "
            f"{entry.sha256}; it is corrupted or the link now serves a different file, and the partial "
            f"file was removed. Run again to retry. {manual_hint}"
        )


def _progress() -> Progress:
    """A transient byte-progress bar on stderr, silent when stderr is not a terminal (logs, CI)."""
    console = Console(file=sys.stderr)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
