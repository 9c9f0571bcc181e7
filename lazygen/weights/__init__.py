"""Official weight files: registry, cached download, and strict checkpoint loading."""

from lazygen.weights.checkpoint import load_strict, read_state_dict, strip_prefix
from lazygen.weights.download import download_weight, resolve_weight, sha256_of, weights_home
from lazygen.weights.registry import (
    DOWNLOAD_HEADERS,
    REGISTRY,
    WeightFile,
    get_weight_file,
    known_weights,
)

__all__ = [
    "DOWNLOAD_HEADERS",
    "REGISTRY",
    "WeightFile",
    "download_weight",
    "get_weight_file",
    "known_weights",
    "load_strict",
    "read_state_dict",
    "resolve_weight",
    "sha256_of",
    "strip_prefix",
    "weights_home",
]
