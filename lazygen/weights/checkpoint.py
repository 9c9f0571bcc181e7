"""Read state dicts from checkpoint files and load them strictly, with messages a user can act on.

Loading goes through ``torch.load(weights_only=True)`` so an untrusted checkpoint cannot run code; the only
extra class allowed by default is ``argparse.Namespace``, which the official MAR checkpoints pickle under
``args``. Key and shape checks happen before ``load_state_dict`` so a wrong model size produces a short
list of the offending keys instead of PyTorch's multi-page error.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lazygen.errors import CheckpointError

SAFETENSORS_SUFFIXES: tuple[str, ...] = (".safetensors",)
TORCH_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".ckpt", ".bin")
# Wrapper state-dict containers in the order they are tried: MAR's EMA weights (used for all reported
# numbers) before its raw weights, then the Lightning/LDM convention.
DEFAULT_PREFER: tuple[str, ...] = ("model_ema", "model", "state_dict")
# Classes besides tensors/containers that official checkpoints pickle and that are safe to rebuild.
DEFAULT_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# Prefixes left by nn.DataParallel/DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
MAX_LISTED_KEYS = 5


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. "module." from DDP, "_orig_mod." from compile)."""
    return {
        (key[len(prefix) :] if key.startswith(prefix) else key): value for key, value in state_dict.items()
    }


def read_state_dict(
    path: str | Path,
    prefer: tuple[str, ...] = DEFAULT_PREFER,
    *,
    extra_safe_globals: Sequence[type] = (),
) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint on CPU, unwrapping the first ``prefer`` key that holds a state dict.

    ``.safetensors`` files are flat by construction. Pickle-based files are loaded with
    ``weights_only=True``; ``extra_safe_globals`` extends the allow-list for third-party checkpoints
    that pickle other harmless classes.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"The checkpoint file {path} {problem}. Check the configured weights path, or remove it to use "
            "the official weights by name (downloaded into the lazygen cache automatically)."
        )
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        loaded = _torch_load(path, extra_safe_globals)
        return _select_state_dict(loaded, path, prefer)
    raise CheckpointError(
        f"The checkpoint file {path} has the unsupported extension {path.suffix!r}. Supported are "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}; rename the file if it is one of these formats, "
        "or convert it to .safetensors."
    )


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    assign: bool = False,
) -> None:
    """Load ``state_dict`` into ``module`` only if keys and shapes match exactly.

    ``assign=True`` makes the module's parameters *be* the checkpoint tensors, so a model built on the
    ``meta`` device can be materialised without a second full copy in memory.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {list(state_dict[key].shape)} vs model {list(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(module, source, missing, unexpected, mismatched))
    try:
        module.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Loading the checkpoint {source} into {type(module).__name__} failed although keys and shapes "
            f"match: {exc}. The file may hold tensors of an unusual dtype or layout; re-export it with "
            "plain contiguous float tensors."
        ) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own error types for every kind of bad file.
        raise _corrupted(path, exc) from exc


def _torch_load(path: Path, extra_safe_globals: Sequence[type]) -> object:
    allowed = [*DEFAULT_SAFE_GLOBALS, *extra_safe_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files.
        unsafe = _unsafe_globals(path, allowed)
        if unsafe:
            raise CheckpointError(
                f"The checkpoint file {path} contains pickled Python objects that are not plain weights "
                f"({', '.join(unsafe)}), which lazygen refuses to unpickle because that could run arbitrary "
                "code. Re-save only the state dict (torch.save(model.state_dict(), ...) or as .safetensors), "
                "or, if you trust the file, pass those classes as extra_safe_globals."
            ) from exc
        raise _corrupted(path, exc) from exc


def _unsafe_globals(path: Path, allowed: Iterable[type]) -> list[str]:
    """Names of pickled globals the weights-only loader rejects; empty if the file holds none or is no pickle."""
    allowed_names = {f"{cls.__module__}.{cls.__qualname__}" for cls in allowed}
    if zipfile.is_zipfile(path):
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a zip that is not a torch checkpoint: report it as corrupted instead.
            return []
    else:
        found = _legacy_pickle_globals(path)
    return [name for name in found if name not in allowed_names and name not in LEGACY_FORMAT_GLOBALS]


# globals every legacy (pre-zip) torch file names for its storages and tensors: torch's own, not user code
LEGACY_FORMAT_GLOBALS = {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "torch.DoubleStorage",
                         "torch.HalfStorage", "torch.BFloat16Storage", "torch.LongStorage", "torch.IntStorage",
                         "torch.ByteStorage", "torch.BoolStorage", "collections.OrderedDict"}  # fmt: skip


def _legacy_pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals of a legacy torch file (a few pickles in a row), read without running any
    of them; empty for a file that is not a pickle stream."""
    import io
    import pickletools

    found: list[str] = []
    with open(path, "rb") as f:
        data = io.BytesIO(f.read())
    try:
        while data.tell() < len(data.getbuffer()):
            strings: list[str] = []
            for op, arg, _ in pickletools.genops(data):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # the tensor bytes after the pickles, or not a pickle at all
        pass
    return list(dict.fromkeys(found))


def _corrupted(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint file {path} could not be read ({type(exc).__name__}: {_first_line(exc)}); it is "
        "corrupted, truncated (e.g. an interrupted download) or not a checkpoint at all. Delete it and "
        "download it again, or point the weights path at a valid checkpoint."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items())
    )


def _select_state_dict(loaded: object, path: Path, prefer: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in prefer:
            if _is_tensor_dict(loaded.get(key)):
                return dict(loaded[key])
        if _is_tensor_dict(loaded):
            return dict(loaded)
        top = ", ".join(repr(key) for key in list(loaded)[: 2 * MAX_LISTED_KEYS]) or "none"
        raise CheckpointError(
            f"The checkpoint file {path} holds no state dict: none of the keys {list(prefer)} maps to a "
            f"dict of tensors and it is not a flat dict of tensors itself (top-level keys: {top}). Point "
            "the weights path at a model checkpoint, or re-save it as a flat state dict or .safetensors."
        )
    raise CheckpointError(
        f"The checkpoint file {path} holds a {type(loaded).__name__}, not a dict of tensors, so it is not "
        "a model checkpoint. Point the weights path at a model checkpoint, or re-save it as a state dict."
    )


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _mismatch_message(
    module: nn.Module,
    source: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    mismatched: Sequence[str],
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
    message = f"The checkpoint {source} does not match {type(module).__name__}: {'; '.join(parts)}."
    wrapper = next(
        (
            prefix
            for prefix in WRAPPER_PREFIXES
            if unexpected and all(k.startswith(prefix) for k in unexpected)
        ),
        None,
    )
    if wrapper is not None and {k[len(wrapper) :] for k in unexpected} >= set(missing):
        return (
            f"{message} Its keys carry the wrapper prefix {wrapper!r} (saved from a DDP- or compile-wrapped "
            f"model); remove it with lazygen.weights.strip_prefix(state_dict, {wrapper!r}) before loading."
        )
    return (
        f"{message} The checkpoint probably belongs to another model size or architecture (for example "
        "MAR-L weights need model=mar_l); choose the model config that matches the checkpoint, or point "
        "the weights path at the checkpoint for this model."
    )
