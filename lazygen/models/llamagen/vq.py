"""LlamaGen's VQ-16 image tokenizer (``vq_ds16_c2i.pt``): codes -> images.

The module tree is the official ``VQModel`` in full (encoder, ``quant_conv``, ``quantize`` with its
``codebook_used`` buffer, ``post_quant_conv``, decoder), because the released file holds all of those
tensors and the official sampler loads it with ``strict=True``; keeping them means the file loads
strictly as is, with no key filter. Generation only runs the decoding path. The residual, attention and
resampling blocks are the LDM ones shared with the KL-16 VAE (same parameter names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazygen.errors import CheckpointError, ConfigError
from lazygen.models.vae.kl import (
    NORM_GROUPS,
    AttnBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    conv3x3,
    group_norm,
    swish,
)
from lazygen.weights.checkpoint import read_state_dict

RGB_CHANNELS = 3
USAGE_WINDOW = 65536  # length of the official codebook-usage buffer (training statistics only)


@dataclass
class VQArch:
    """The official VQ ``ModelArgs`` plus the widths it hard-codes (defaults: VQ-16, 16x downsampling)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # the official default: adds the ``quantize.codebook_used`` buffer
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2  # encoder; the decoder has one more per level

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        widths = sorted({self.ch * m for m in self.ch_mult})
        if any(w % NORM_GROUPS for w in widths):
            raise ConfigError(
                f"VQ widths {widths} (ch * ch_mult) must be multiples of {NORM_GROUPS} GroupNorm groups."
            )

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class ConvLevel(nn.Module):
    """One resolution: ``res.{j}`` blocks, optional ``attn.{j}`` after each, optional resampling."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, attn: bool, resample: str | None) -> None:
        super().__init__()
        widths = [in_ch] + [out_ch] * num_blocks
        self.res = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(num_blocks) if attn)
        if resample == "down":
            self.downsample = Downsample(out_ch)
        elif resample == "up":
            self.upsample = Upsample(out_ch)
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if self.resample == "down":
            x = self.downsample(x)
        elif self.resample == "up":
            x = self.upsample(x)
        return x


def mid_blocks(width: int) -> nn.ModuleList:
    """``mid.0`` ResNet, ``mid.1`` attention, ``mid.2`` ResNet."""
    return nn.ModuleList([ResnetBlock(width, width), AttnBlock(width), ResnetBlock(width, width)])


class Encoder(nn.Module):
    """Image -> z (B, z_channels, H/16, W/16); attention only at the lowest resolution."""

    def __init__(self, arch: VQArch) -> None:
        super().__init__()
        ch, mult, last = arch.ch, arch.ch_mult, len(arch.ch_mult) - 1
        self.conv_in = conv3x3(RGB_CHANNELS, ch)
        in_mult = (1, *mult)
        self.conv_blocks = nn.ModuleList(
            ConvLevel(ch * in_mult[i], ch * m, arch.num_res_blocks, i == last, "down" if i != last else None)
            for i, m in enumerate(mult)
        )
        width = ch * mult[-1]
        self.mid = mid_blocks(width)
        self.norm_out = group_norm(width)
        self.conv_out = conv3x3(width, arch.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """z -> image; ``conv_blocks[0]`` is the lowest resolution (with attention), each but the last upsamples."""

    def __init__(self, arch: VQArch) -> None:
        super().__init__()
        ch, mult = arch.ch, arch.ch_mult
        width = ch * mult[-1]
        self.conv_in = conv3x3(arch.z_channels, width)
        self.mid = mid_blocks(width)
        levels, block_in = [], width
        for n, i in enumerate(reversed(range(len(mult)))):
            levels.append(
                ConvLevel(block_in, ch * mult[i], arch.num_res_blocks + 1, n == 0, "up" if i else None)
            )
            block_in = ch * mult[i]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = conv3x3(block_in, RGB_CHANNELS)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """The codebook (``embedding``), l2-normalised at lookup when the tokenizer was trained that way."""

    def __init__(self, arch: VQArch) -> None:
        super().__init__()
        self.l2_norm = arch.codebook_l2_norm
        self.embedding = nn.Embedding(arch.codebook_size, arch.codebook_embed_dim)
        if arch.codebook_show_usage:  # training statistics; kept so the official file loads strictly
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def lookup(self, codes: Tensor) -> Tensor:
        """Code ids (...) -> code vectors (..., embed_dim)."""
        return self.codebook()[codes]

    def nearest(self, z: Tensor) -> Tensor:
        """z (B, C, h, w) -> ids (B, h*w) of the nearest codes (cosine when l2-normalised), raster order."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        book = self.codebook()
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
        return dist.argmin(dim=1).reshape(z.shape[0], -1)


class VQModel(nn.Module):
    """VQ-16 tokenizer with the official module tree; :meth:`decode_code` is what generation uses."""

    def __init__(self, arch: VQArch | None = None) -> None:
        super().__init__()
        self.arch = arch = arch or VQArch()
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)
        self.quantize = VectorQuantizer(arch)
        self.quant_conv = nn.Conv2d(arch.z_channels, arch.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(arch.codebook_embed_dim, arch.z_channels, 1)

    def decode_code(self, codes: Tensor, shape: tuple[int, int, int, int] | None = None) -> Tensor:
        """Codes (B, h*w) in raster order -> images (B, 3, 16h, 16w), roughly in [-1, 1] (not clamped).

        ``shape`` is the official ``(B, codebook_embed_dim, h, w)``; by default a square grid.
        """
        b, n = codes.shape
        if shape is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} codes are not a square grid; pass shape=(B, C, h, w)")
            shape = (b, self.arch.codebook_embed_dim, side, side)
        _, c, h, w = shape
        quant = self.quantize.lookup(codes).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(quant))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h*w) -> images in [0, 1] (B, 3, 16h, 16w)."""
        return ((self.decode_code(codes) + 1) / 2).clamp(0, 1)

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> code ids (B, H/16 * W/16), raster order."""
        return self.quantize.nearest(self.quant_conv(self.encoder(images)))


def read_vq_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The ``"model"`` weights of an official VQ training checkpoint (the official sampler reads only those)."""
    state = read_state_dict(path, prefer=("model",))
    if "quantize.embedding.weight" not in state:
        raise CheckpointError(
            f"{path} holds no LlamaGen VQ weights (no 'quantize.embedding.weight'); point "
            "model.tokenizer.path at the official vq_ds16_c2i.pt."
        )
    return state


class VQTokenizer(nn.Module):
    """Generated code ids (B, h*w) -> images in [-1, 1] at the evaluation size.

    Models generated at 384 px are judged at 256 px, as in the official recipe: a bicubic resize of the
    float decoder output (no antialias) before quantisation to uint8.
    """

    def __init__(self, vq: VQModel, eval_size: int | None = None) -> None:
        super().__init__()
        self.vq = vq
        self.eval_size = eval_size

    def decode_tokens_latent(self, ids: Tensor) -> Tensor:
        images = self.vq.decode_code(ids.to(self.vq.quantize.embedding.weight.device).long())
        if self.eval_size is not None and images.shape[-1] != self.eval_size:
            images = F.interpolate(images, size=(self.eval_size, self.eval_size), mode="bicubic")
        return images
