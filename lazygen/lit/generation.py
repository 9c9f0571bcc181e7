"""The generation step, and the Lightning module that runs it under ``Trainer.predict``.

Lightning is only the launcher and sharder here: it places the module on the device, splits the sample
specs across processes without duplicates, and applies the precision plugin. Everything numerical lives
in the model, the sampler and the cache policy.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import nn

from lazygen.cache.base import CachePolicy, CacheStats
from lazygen.samplers.mar import MARSampler

NUMPY_SEED_MOD = 2**32
PIXEL_MAX = 255


def to_uint8_images(decoded: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3), rounded as the official evaluation."""
    x = ((decoded.float() + 1) / 2 * PIXEL_MAX).clamp(0, PIXEL_MAX).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exact_fp32(device: torch.device) -> None:
    """Keep ``32-true`` exact on CUDA: cuDNN's convolutions default to TF32 (10-bit mantissas), which would
    put the VAE decode ~1e-3 away from fp32 and from the CPU. Process-wide, as torch's switches are."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


KIB = 1024


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: allocated on the GPU since the last reset, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB  # Linux reports KiB


@dataclass
class Generated:
    images: torch.Tensor  # (B, H, W, 3) uint8
    latents: torch.Tensor  # (B, C, h, w) float32, latent-scaled
    seconds: float  # wall-clock of sampling + decoding, device synchronized, compilation excluded
    cache: CacheStats  # what the policy recomputed for this batch
    peak_mem_bytes: int = 0  # see peak_memory_bytes
    compile_seconds: float = 0.0  # torch.compile time spent during this batch (first batches only)


# hardware.precision -> the autocast dtype the networks run under (None: exact fp32)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32-true": None, "bf16-mixed": torch.bfloat16}


def compile_seconds_so_far() -> float:
    """Seconds torch.compile has spent in this process (dynamo's frame compilations, backend included)."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def resolved_compile_mode(mode: str, device: torch.device) -> str:
    """``auto``: CUDA graphs where the launches of many small kernels dominate (GPU), inductor elsewhere."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if device.type == "cuda" else "default"


class Generator(nn.Module):
    """Model x tokenizer x sampler x cache policy: labels and seeds in, images out.

    ``precision`` and ``compile_mode`` (None: eager) are ``hardware.precision`` and, when
    ``hardware.compile`` is on, ``hardware.compile_mode``; the model compiles its own parts on first use.
    """

    def __init__(self, model: nn.Module, tokenizer: nn.Module, sampler: MARSampler, policy: CachePolicy,
                 precision: str = "32-true", compile_mode: str | None = None):  # fmt: skip
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.policy = policy
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        self.compile_mode = compile_mode
        self._compiled = False

    def with_sampler(self, sampler: MARSampler) -> Generator:
        """The same network, tokenizer, policy, numerics and compile mode under another sampler (a
        benchmark's short warm-up must run the kernels the timed run will)."""
        twin = Generator(self.model, self.tokenizer, sampler, self.policy)
        twin.autocast_dtype, twin.compile_mode = self.autocast_dtype, self.compile_mode
        return twin

    def numerics(self, device: torch.device):
        """The context sampling runs in: bf16 autocast for ``bf16-mixed``, else nothing."""
        dtype = self.autocast_dtype
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and device.type != "meta")

    def _compile(self, device: torch.device) -> None:
        if self.compile_mode is None or self._compiled or device.type == "meta":
            return
        compile_parts = getattr(self.model, "compile_parts", None)
        if compile_parts is not None:
            compile_parts(resolved_compile_mode(self.compile_mode, device))
        self._compiled = True

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, seeds: list[int]) -> Generated:
        device = labels.device
        if self.sampler.conf.rng == "official":
            # the official code consumes the global streams; seed them per batch from its first sample
            torch.manual_seed(seeds[0])
            np.random.seed(seeds[0] % NUMPY_SEED_MOD)
        self.policy.stats = CacheStats()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if self.autocast_dtype is None:
            exact_fp32(device)
        self._compile(device)
        compiling = compile_seconds_so_far() if self.compile_mode is not None else 0.0
        start = time.perf_counter()
        with self.numerics(device):
            latents = self.sampler.sample(self.model, labels, seeds, self.policy).float()
            images = to_uint8_images(self.tokenizer.decode_tokens_latent(latents))
        sync(device)
        seconds = time.perf_counter() - start
        compiled = compile_seconds_so_far() - compiling if self.compile_mode is not None else 0.0
        return Generated(images, latents, seconds - compiled, self.policy.stats, peak_memory_bytes(device),
                         compile_seconds=compiled)  # fmt: skip


class GenerationModule(L.LightningModule):
    """``predict_step`` returns one batch's images, latents and timing, keyed by global sample index."""

    def __init__(self, generator: Generator, extractor: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.extractor = extractor  # quality features, extracted where the images are made

    def _extractor_device(self, default: torch.device) -> torch.device:
        """Where the extractor's weights are; ``default`` for one without any (or a plain callable)."""
        if not isinstance(self.extractor, nn.Module):
            return default
        tensor = next(iter(self.extractor.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.extractor.buffers()), None)
        return tensor.device if tensor is not None else default

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = self.generator.generate(batch["label"], [int(s) for s in batch["seed"].tolist()])
        extracted = {}
        if self.extractor is not None:
            from lazygen.metrics.quality import split_extractor_output

            # images may come back on the host (the AR sampler writes its token grid to pinned memory, and a
            # network-free tokenizer keeps it there): the extractor reads them where its weights are
            images = out.images.to(self._extractor_device(out.images.device))
            with torch.no_grad():
                features = split_extractor_output(self.extractor(images.permute(0, 3, 1, 2).contiguous()))
            extracted = {"features": features.features.float().cpu(), "logits": features.logits.float().cpu()}
        return {
            **extracted,
            "index": batch["index"].cpu(),
            "label": batch["label"].cpu(),
            "images": out.images.cpu(),
            "latents": out.latents.cpu(),
            "seconds": out.seconds,
            "compile_seconds": out.compile_seconds,
            "cache": out.cache.counters(),
            "peak_mem_bytes": out.peak_mem_bytes,
        }
