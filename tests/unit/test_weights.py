"""Weight registry, cached download and strict checkpoint loading, all without internet access."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lazygen.errors import CheckpointError, ConfigError
from lazygen.weights import (
    DOWNLOAD_HEADERS,
    REGISTRY,
    WeightFile,
    download_weight,
    get_weight_file,
    known_weights,
    load_strict,
    read_state_dict,
    resolve_weight,
    sha256_of,
    strip_prefix,
    weights_home,
)

PAYLOAD = b"lazygen-test-weights" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64
CONTENT_LENGTH_EXCESS = 10
RANDOM_BYTES = 4096
SERVER_POLL_S = 0.01  # fast shutdown of the test server


# ------------------------------------------------------------------ fixtures


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /ok.bin, a web page at /page, a short body at /short, 404 elsewhere."""

    seen_user_agents: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).seen_user_agents.append(self.headers.get("User-Agent", ""))
        if self.path.startswith("/ok.bin"):
            self._reply(PAYLOAD, "application/octet-stream", len(PAYLOAD))
        elif self.path == "/page":
            self._reply(b"<html>log in</html>", "text/html; charset=utf-8", None)
        elif self.path == "/short":
            self._reply(PAYLOAD, "application/octet-stream", len(PAYLOAD) + CONTENT_LENGTH_EXCESS)
        else:
            self.send_error(404, "Not Found")

    def _reply(self, body: bytes, content_type: str, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """Base URL of a local HTTP server running in a background thread."""
    _Handler.seen_user_agents = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(SERVER_POLL_S,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a localhost port nothing listens on, so connecting fails immediately (offline stand-in)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.bin"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to open a URL."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", _refuse)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "home"
    monkeypatch.setenv("LAZYGEN_HOME", str(root))
    return root


def _entry(url: str, *, sha256: str | None = PAYLOAD_SHA, size: int | None = len(PAYLOAD)) -> WeightFile:
    return WeightFile("toy", url, "toy/weights.bin", size, sha256, "toy file for tests")


# ------------------------------------------------------------------ registry


def test_registry_entries_match_reference() -> None:
    assert set(known_weights()) == {"kl16", "mar_b", "mar_l", "mar_h", "adm_in256_stats", "tiny_mar",
                                    "tiny_mar_samples",
                                    "tiny_kl", "tiny_llamagen", "digits16_evaluator", "digits16_stats", "llamagen_b_256",
                                    "llamagen_b_384", "llamagen_l_256", "llamagen_l_384", "llamagen_xl_384",
                                    "llamagen_xxl_384", "llamagen_3b_384", "vq_ds16_c2i"}  # fmt: skip
    kl16 = get_weight_file("kl16")
    assert kl16.filename == "vae/kl16.ckpt"
    assert kl16.size_bytes == 265_900_046
    assert kl16.sha256 == "34ce001bcfffb7af67ec8af1e683a30d7bd45760855ddc7deedc1330f2cfd38f"
    mar_b = get_weight_file("mar_b")
    assert mar_b.filename == "mar/mar_base/checkpoint-last.pth"
    assert mar_b.size_bytes == 1_663_614_946
    assert mar_b.sha256 == "7e970a33bc90353e2fabe3498ed1f2d194dd8d17cd387665f80b2984dfca538c"
    assert get_weight_file("mar_l").filename == "mar/mar_large/checkpoint-last.pth"
    assert get_weight_file("mar_h").sha256 is None
    assert get_weight_file("adm_in256_stats").url.endswith("fid_stats/adm_in256_stats.npz")
    assert DOWNLOAD_HEADERS["User-Agent"] == "Wget/1.16 (linux-gnu)"
    for name, entry in REGISTRY.items():
        assert entry.name == name
        assert entry.url.startswith("https://") or (entry.bundled and entry.url == "")


def test_bundled_files_resolve_inside_the_package_and_a_missing_one_says_so(monkeypatch, tmp_path) -> None:
    path = resolve_weight("tiny_mar", home=tmp_path)
    assert path == get_weight_file("tiny_mar").bundled_path and path.is_file()
    assert not any(tmp_path.iterdir())  # nothing was downloaded or cached
    monkeypatch.setattr("lazygen.weights.registry.ASSETS_DIR", tmp_path / "gone")
    with pytest.raises(CheckpointError, match="missing from this installation"):
        resolve_weight("digits16_stats", home=tmp_path)


def test_registry_is_immutable() -> None:
    with pytest.raises(FrozenInstanceError):
        get_weight_file("mar_b").url = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        REGISTRY["evil"] = get_weight_file("mar_b")  # type: ignore[index]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="mar_bb") as info:
        get_weight_file("mar_bb")
    for name in known_weights():
        assert name in str(info.value)


# ------------------------------------------------------------------ resolution


def test_weights_home_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAZYGEN_HOME", str(tmp_path))
    assert weights_home() == tmp_path
    monkeypatch.delenv("LAZYGEN_HOME")
    assert weights_home() == Path.home() / ".cache" / "lazygen"


def test_local_path_wins(home: Path, tmp_path: Path, no_network: None) -> None:
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    assert resolve_weight("mar_b", str(local)) == local
    assert resolve_weight(None, local) == local


def test_missing_local_path_names_path_and_key(home: Path, tmp_path: Path, no_network: None) -> None:
    missing = tmp_path / "nowhere" / "ckpt.pth"
    with pytest.raises(CheckpointError) as info:
        resolve_weight("mar_b", str(missing), config_key="model.vae.path")
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message and "model.vae.path" in message
    with pytest.raises(CheckpointError, match="directory"):
        resolve_weight(None, tmp_path)


def test_nothing_configured_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.weights\.path"):
        resolve_weight(None, None)


def test_cache_hit_without_network(home: Path, no_network: None) -> None:
    cached = home / "mar" / "mar_base" / "checkpoint-last.pth"
    cached.parent.mkdir(parents=True)
    with cached.open("wb") as handle:  # sparse file of the pinned size: cheap, passes the size check
        handle.truncate(get_weight_file("mar_b").size_bytes)
    assert resolve_weight("mar_b") == cached
    assert resolve_weight("mar_b", download=False) == cached


def test_cache_wrong_size_is_rejected(home: Path, no_network: None) -> None:
    cached = home / "vae" / "kl16.ckpt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"partial")
    with pytest.raises(CheckpointError, match="incomplete download") as info:
        resolve_weight("kl16")
    assert str(cached) in str(info.value)


def test_cache_sha256_verification_is_opt_in(tmp_path: Path, no_network: None) -> None:
    entry = _entry("http://unused.invalid/x", sha256=WRONG_SHA)
    cached = tmp_path / entry.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    assert resolve_weight(entry, home=tmp_path) == cached
    with pytest.raises(CheckpointError, match="sha256"):
        resolve_weight(entry, home=tmp_path, verify_sha256=True)
    assert resolve_weight(replace(entry, sha256=PAYLOAD_SHA), home=tmp_path, verify_sha256=True) == cached


def test_download_disabled_names_url_and_destination(home: Path, no_network: None) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_weight("mar_l", download=False)
    message = str(info.value)
    assert get_weight_file("mar_l").url in message
    assert str(home / "mar" / "mar_large" / "checkpoint-last.pth") in message


# ------------------------------------------------------------------ downloading


def test_download_from_local_server(server: str, tmp_path: Path) -> None:
    entry = _entry(f"{server}/ok.bin?rlkey=abc&dl=0")
    path = resolve_weight(entry, home=tmp_path)
    assert path == tmp_path / "toy" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert sha256_of(path) == PAYLOAD_SHA
    assert not path.with_name(path.name + ".part").exists()
    assert _Handler.seen_user_agents == ["Wget/1.16 (linux-gnu)"]
    # The second call is a cache hit and does not contact the server again.
    assert resolve_weight(entry, home=tmp_path, verify_sha256=True) == path
    assert len(_Handler.seen_user_agents) == 1


def test_download_without_pinned_checksums(server: str, tmp_path: Path) -> None:
    entry = _entry(f"{server}/ok.bin", sha256=None, size=None)
    assert resolve_weight(entry, home=tmp_path).read_bytes() == PAYLOAD


def test_download_from_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "weights.bin"
    assert download_weight(_entry(source.as_uri()), dest) == dest
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("sha256", "size", "pattern"),
    [(WRONG_SHA, len(PAYLOAD), "sha256"), (PAYLOAD_SHA, len(PAYLOAD) + 1, "bytes but should have")],
)
def test_checksum_mismatch_removes_partial(
    server: str, tmp_path: Path, sha256: str, size: int, pattern: str
) -> None:
    entry = _entry(f"{server}/ok.bin", sha256=sha256, size=size)
    dest = tmp_path / entry.filename
    with pytest.raises(CheckpointError, match=pattern) as info:
        resolve_weight(entry, home=tmp_path)
    assert entry.url in str(info.value)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


@pytest.mark.parametrize(
    ("path", "pattern"),
    [("/missing", "HTTP 404"), ("/page", "web page"), ("/short", "connection closed after")],
)
def test_server_failures_are_checkpoint_errors(server: str, tmp_path: Path, path: str, pattern: str) -> None:
    entry = _entry(f"{server}{path}", sha256=None, size=None)
    dest = tmp_path / entry.filename
    with pytest.raises(CheckpointError, match=pattern) as info:
        resolve_weight(entry, home=tmp_path)
    assert entry.url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_offline_names_url_destination_and_config_key(
    closed_port_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _entry(closed_port_url)
    monkeypatch.setattr("lazygen.weights.registry.REGISTRY", {"toy": entry})  # resolve by name
    with pytest.raises(CheckpointError) as info:
        resolve_weight("toy")
    message = str(info.value)
    dest = home / entry.filename
    assert closed_port_url in message
    assert str(dest) in message
    assert "model.weights.path" in message
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_unwritable_home_is_checkpoint_error(tmp_path: Path, server: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CheckpointError, match="LAZYGEN_HOME"):
        resolve_weight(_entry(f"{server}/ok.bin"), home=blocker)


# ------------------------------------------------------------------ reading checkpoints


class _Custom:
    """A class no allow-list contains, to check that arbitrary pickled objects are refused."""


def _sd(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((2, 3), value), "bias": torch.full((2,), value)}


def test_mar_checkpoint_prefers_ema_and_allows_namespace(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-last.pth"
    args = argparse.Namespace(model="mar_base", diffloss_d=6, img_size=256)
    torch.save({"model": _sd(1.0), "model_ema": _sd(2.0), "epoch": 799, "args": args}, path)
    state = read_state_dict(path)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], torch.full((2, 3), 2.0))
    assert torch.equal(read_state_dict(path, prefer=("model",))["bias"], torch.full((2,), 1.0))


def test_lightning_state_dict_and_flat_dict(tmp_path: Path) -> None:
    wrapped = tmp_path / "kl16.ckpt"
    torch.save({"state_dict": _sd(3.0), "global_step": 5}, wrapped)
    assert torch.equal(read_state_dict(wrapped)["weight"], torch.full((2, 3), 3.0))
    flat = tmp_path / "flat.pt"
    torch.save(_sd(4.0), flat)
    assert torch.equal(read_state_dict(flat)["bias"], torch.full((2,), 4.0))


def test_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(_sd(5.0), str(path))
    state = read_state_dict(path)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], torch.full((2, 3), 5.0))


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pth"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        read_state_dict(missing)
    assert str(missing) in str(info.value)


def test_random_bytes_are_corrupted(tmp_path: Path) -> None:
    for name in ("random.pth", "random.safetensors", "empty.ckpt"):
        path = tmp_path / name
        path.write_bytes(os.urandom(RANDOM_BYTES) if name.startswith("random") else b"")
        with pytest.raises(CheckpointError, match="corrupted") as info:
            read_state_dict(path)
        assert str(path) in str(info.value) and "download it again" in str(info.value)


def test_truncated_zip_is_corrupted(tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save({"model_ema": _sd(1.0)}, full)
    truncated = tmp_path / "truncated.pth"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted") as info:
        read_state_dict(truncated)
    assert str(truncated) in str(info.value)


def test_non_checkpoints_are_rejected(tmp_path: Path) -> None:
    as_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], as_list)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        read_state_dict(as_list)
    no_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, no_tensors)
    with pytest.raises(CheckpointError, match="holds no state dict.*'epoch'"):
        read_state_dict(no_tensors)
    odd_suffix = tmp_path / "weights.npz"
    odd_suffix.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported extension"):
        read_state_dict(odd_suffix)


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"model": _sd(1.0), "extra": _Custom()}, path)
    with pytest.raises(CheckpointError, match="_Custom"):
        read_state_dict(path)
    assert set(read_state_dict(path, extra_safe_globals=[_Custom])) == {"weight", "bias"}


# ------------------------------------------------------------------ strict loading


class _Toy(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2)
        self.norm = nn.LayerNorm(2)


def test_load_strict_success_and_assign_on_meta() -> None:
    source = _Toy()
    target = _Toy()
    load_strict(target, source.state_dict(), "toy.pth")
    assert torch.equal(target.proj.weight, source.proj.weight)

    with torch.device("meta"):
        lazy = _Toy()
    state = {key: value.clone() for key, value in source.state_dict().items()}
    load_strict(lazy, state, "toy.pth", assign=True)
    assert lazy.proj.weight.device.type == "cpu"
    assert lazy.proj.weight.data_ptr() == state["proj.weight"].data_ptr()  # no second copy
    assert isinstance(lazy.proj.weight, nn.Parameter)


def test_load_strict_reports_missing_unexpected_and_shapes() -> None:
    model = _Toy()
    state = _Toy(width=5).state_dict()
    del state["norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    before = model.proj.weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load_strict(model, state, "mar_l.pth")
    message = str(info.value)
    assert "mar_l.pth" in message and "_Toy" in message
    assert "1 missing keys (norm.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "proj.weight: checkpoint [2, 5] vs model [2, 3]" in message
    assert "model=mar_l" in message
    assert torch.equal(model.proj.weight, before)  # nothing was loaded


def test_load_strict_lists_at_most_five_keys() -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])
    with pytest.raises(CheckpointError, match=r"8 missing keys \(0\.weight.*\(3 more\)"):
        load_strict(model, {}, "empty.pth")


def test_wrapper_prefix_hint_and_strip_prefix() -> None:
    model = _Toy()
    wrapped = {f"module.{key}": value for key, value in _Toy().state_dict().items()}
    with pytest.raises(CheckpointError, match="strip_prefix"):
        load_strict(model, wrapped, "ddp.pth")
    stripped = strip_prefix(wrapped, "module.")
    assert set(stripped) == set(model.state_dict())
    load_strict(model, stripped, "ddp.pth")
    assert strip_prefix({"a": torch.zeros(1)}, "_orig_mod.").keys() == {"a"}
