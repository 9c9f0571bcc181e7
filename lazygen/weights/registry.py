"""Registry of the official weight files that lazygen knows how to fetch.

The entries pin the URLs, cache-relative file names and (where known) the exact size and sha256 of the
files released with MAR (LTH14/mar) and LlamaGen (FoundationVision/LlamaGen). Pinning them here means a
truncated or swapped download is caught before it silently produces wrong images or wrong FID numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from lazygen.errors import ConfigError

# Dropbox serves the raw file for the official ``dl=0`` links only to this user agent (the header the
# reference download script sends); other hosts ignore it, so it is sent with every request.
DOWNLOAD_HEADERS: Mapping[str, str] = MappingProxyType({"User-Agent": "Wget/1.16 (linux-gnu)"})


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file: where it lives online and where it is cached under the weights home."""

    name: str
    url: str
    filename: str
    size_bytes: int | None
    sha256: str | None
    description: str
    bundled: bool = False  # shipped inside the package (lazygen/assets/filename): never downloaded

    @property
    def bundled_path(self) -> Path:
        return ASSETS_DIR / self.filename


# Files that lazygen trains itself and ships; each has a ``<name>.json`` manifest beside it (sha256, the
# training command, the commit, the final loss).
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def _bundled(name: str, filename: str, description: str) -> WeightFile:
    return WeightFile(name, url="", filename=filename, size_bytes=None, sha256=None, description=description,
                      bundled=True)  # fmt: skip


# LlamaGen files (FoundationVision/LlamaGen README). Their sizes and checksums are unknown here, so a
# download is accepted unverified, as for the other entries without them.
LLAMAGEN_HF = "https://huggingface.co/FoundationVision/LlamaGen/resolve/main"


def _llamagen(size: str, px: int, note: str) -> WeightFile:
    """The official c2i GPT checkpoint ``c2i_<size>_<px>.pt`` (registry name ``llamagen_<size>_<px>``)."""
    filename = f"c2i_{size}_{px}.pt"
    return WeightFile(f"llamagen_{size.lower()}_{px}", url=f"{LLAMAGEN_HF}/{filename}",
                      filename=f"llamagen/{filename}", size_bytes=None, sha256=None,
                      description=f"LlamaGen-{size} c2i GPT at {px} px ({note}).")  # fmt: skip


_ENTRIES: tuple[WeightFile, ...] = (
    WeightFile(
        name="kl16",
        url="https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=0",
        filename="vae/kl16.ckpt",
        size_bytes=265_900_046,
        sha256="34ce001bcfffb7af67ec8af1e683a30d7bd45760855ddc7deedc1330f2cfd38f",
        description="KL-16 VAE tokenizer used by MAR/LazyMAR (weights under key 'model').",
    ),
    WeightFile(
        name="mar_b",
        url="https://www.dropbox.com/scl/fi/f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth?rlkey=a6i4bo71vhfo4anp33n9ukujb&dl=0",
        filename="mar/mar_base/checkpoint-last.pth",
        size_bytes=1_663_614_946,
        sha256="7e970a33bc90353e2fabe3498ed1f2d194dd8d17cd387665f80b2984dfca538c",
        description="MAR-B (208M params) checkpoint with 'model' and EMA 'model_ema' state dicts.",
    ),
    WeightFile(
        name="mar_l",
        url="https://www.dropbox.com/scl/fi/pxacc5b2mrt3ifw4cah6k/checkpoint-last.pth?rlkey=m48ovo6g7ivcbosrbdaz0ehqt&dl=0",
        filename="mar/mar_large/checkpoint-last.pth",
        size_bytes=None,
        sha256=None,
        description="MAR-L (478M params) checkpoint with 'model' and EMA 'model_ema' state dicts.",
    ),
    WeightFile(
        name="mar_h",
        url="https://www.dropbox.com/scl/fi/1qmfx6fpy3k7j9vcjjs3s/checkpoint-last.pth?rlkey=4lae281yzxb406atp32vzc83o&dl=0",
        filename="mar/mar_huge/checkpoint-last.pth",
        size_bytes=None,
        sha256=None,
        description="MAR-H (942M params) checkpoint with 'model' and EMA 'model_ema' state dicts.",
    ),
    _llamagen("B", 256, "111M, DDP: weights under 'model'"),
    _llamagen("B", 384, "111M, DDP: weights under 'model'"),
    _llamagen("L", 256, "343M, DDP: weights under 'model'"),
    _llamagen("L", 384, "343M, DDP: weights under 'model'"),
    _llamagen("XL", 384, "775M, DDP: weights under 'model'"),
    _llamagen("XXL", 384, "1.4B, FSDP: a bare state dict"),
    _llamagen("3B", 384, "3.1B, FSDP: a bare state dict"),
    WeightFile(
        name="vq_ds16_c2i",
        url=f"{LLAMAGEN_HF}/vq_ds16_c2i.pt",
        filename="llamagen/vq_ds16_c2i.pt",
        size_bytes=None,
        sha256=None,
        description="LlamaGen VQ-16 image tokenizer (72M params; weights under 'model').",
    ),
    WeightFile(
        name="adm_in256_stats",
        url="https://github.com/LTH14/mar/raw/main/fid_stats/adm_in256_stats.npz",
        filename="fid_stats/adm_in256_stats.npz",
        size_bytes=None,
        sha256=None,
        description="Inception mean/covariance ('mu', 'sigma') of ADM's ImageNet-256 reference batch for FID.",
    ),
    _bundled("tiny_mar", "tiny_mar.safetensors", "tiny MAR trained by lazygen on digits16 (EMA weights)."),
    _bundled(
        "tiny_mar_samples",
        "tiny_mar_samples.safetensors",
        "tiny_mar's candidate successor: trained on posterior samples, 12000 steps (EMA weights; README).",
    ),
    _bundled(
        "tiny_kl",
        "tiny_kl.safetensors",
        "tiny_mar's stride-1 KL autoencoder, trained by lazygen on digits16 (EMA weights).",
    ),
    _bundled(
        "tiny_llamagen",
        "tiny_llamagen.safetensors",
        "tiny LlamaGen trained by lazygen on digits16 (EMA weights).",
    ),
    _bundled(
        "digits16_evaluator",
        "digits16_evaluator.safetensors",
        "digits16 classifier: FID features, IS logits and class accuracy of tiny models.",
    ),
    _bundled(
        "digits16_stats",
        "digits16_reference_stats.npz",
        "digits16 evaluator mean/covariance of the real training digits, for FID.",
    ),
)

REGISTRY: Mapping[str, WeightFile] = MappingProxyType({entry.name: entry for entry in _ENTRIES})


def known_weights() -> tuple[str, ...]:
    """Names accepted by :func:`get_weight_file`, sorted, for error messages and CLI listings."""
    return tuple(sorted(REGISTRY))


def get_weight_file(name: str) -> WeightFile:
    """Look up a registry entry, turning a typo into a ConfigError that lists the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown weight file name {name!r}. Known names are: {', '.join(known_weights())}. "
            "Fix the name in your config (e.g. model.weights.registry=mar_b), or set model.weights.path "
            "to a local checkpoint file instead."
        ) from None
