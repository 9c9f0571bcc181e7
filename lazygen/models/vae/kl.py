"""The KL-regularised convolutional autoencoder ("KL-16") that MAR uses as its image tokenizer.

A clean-room implementation of the LDM ``AutoencoderKL`` architecture as configured by MAR. Module
and parameter names mirror the official ``kl16.ckpt`` state dict (``encoder.down.{i}.block.{j}.conv1``,
``decoder.up.{i}.upsample.conv``, ``quant_conv``...) so the released weights load with ``strict=True``.

Shapes for the official config: a ``(B, 3, 256, 256)`` image in ``[-1, 1]`` encodes to a
``(B, 16, 16, 16)`` latent (16x downsampling); MAR multiplies that latent by :data:`LATENT_SCALE` before
its transformer and divides by it again before decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lazygen.errors import CheckpointError, ConfigError

LATENT_SCALE = 0.2325
"""MAR's fixed multiplier that brings KL-16 latents to roughly unit variance."""

NORM_GROUPS = 32
NORM_EPS = 1e-6
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0
DOWNSAMPLE_PAD = (0, 1, 0, 1)  # (left, right, top, bottom): asymmetric pad before the stride-2 conv
UPSAMPLE_FACTOR = 2

# The official KL-16 ddconfig, as MAR constructs it.
KL16_CH = 128
KL16_CH_MULT = (1, 1, 2, 2, 4)
KL16_NUM_RES_BLOCKS = 2
KL16_Z_CHANNELS = 16
KL16_EMBED_DIM = 16
KL16_RESOLUTION = 256
KL16_ATTN_RESOLUTIONS_ENCODER = (16,)
KL16_ATTN_RESOLUTIONS_DECODER: tuple[int, ...] = ()
RGB_CHANNELS = 3


@dataclass
class KLArch:
    """The autoencoder's shape (LDM ``ddconfig``); the defaults are MAR's KL-16.

    The number of levels is ``len(ch_mult)``: each level but the last halves the resolution, so
    ``ch_mult=[1]`` is a stride-1 autoencoder (the tiny testbed's: a 16x16 image <-> a 16x16 latent grid).
    """

    ch: int = KL16_CH
    ch_mult: list[int] = field(default_factory=lambda: list(KL16_CH_MULT))
    num_res_blocks: int = KL16_NUM_RES_BLOCKS
    z_channels: int = KL16_Z_CHANNELS
    embed_dim: int = KL16_EMBED_DIM
    in_channels: int = RGB_CHANNELS
    out_ch: int = RGB_CHANNELS
    resolution: int = KL16_RESOLUTION
    attn_resolutions_encoder: list[int] = field(default_factory=lambda: list(KL16_ATTN_RESOLUTIONS_ENCODER))
    attn_resolutions_decoder: list[int] = field(default_factory=lambda: list(KL16_ATTN_RESOLUTIONS_DECODER))


def swish(x: torch.Tensor) -> torch.Tensor:
    """The LDM nonlinearity ``x * sigmoid(x)`` (identical to SiLU)."""
    return F.silu(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the checkpoint's fixed 32 groups (even when a tiny variant is only 32 wide)."""
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


class ResnetBlock(nn.Module):
    """Pre-norm residual block without a timestep embedding; a 1x1 shortcut only when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.nin_shortcut = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            # (B, C, H, W) -> (B, 1 head, H*W, C)
            return t.reshape(b, 1, c, h * w).transpose(-1, -2)

        # SDPA's default scale is C^-0.5, the scale the checkpoint was trained with.
        out = F.scaled_dot_product_attention(
            tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed))
        )
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W: zero-pad right/bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, DOWNSAMPLE_PAD, mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=UPSAMPLE_FACTOR, mode="nearest"))


class MidBlock(nn.Module):
    """ResNet -> attention -> ResNet at the lowest resolution (names ``block_1``, ``attn_1``, ``block_2``)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampling.

    Holds ``block``/``attn`` ModuleLists and a ``downsample`` or ``upsample`` child so the state-dict
    names match ``encoder.down.{i}.*`` and ``decoder.up.{i}.*``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_blocks: int,
        use_attn: bool,
        dropout: float,
        resample: Literal["down", "up"] | None,
    ) -> None:
        super().__init__()
        widths = [in_ch] + [out_ch] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, dropout) for a, b in zip(widths[:-1], widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(num_blocks) if use_attn)
        self.downsample = Downsample(out_ch) if resample == "down" else None
        self.upsample = Upsample(out_ch) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """Image -> ``2 * z_channels`` moment maps (mean | logvar), downsampling by 2 at every level but the last."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv_in = conv3x3(in_channels, ch)
        in_mult = (1, *ch_mult)
        last = len(ch_mult) - 1
        levels = []
        for i, mult in enumerate(ch_mult):
            res = resolution // (UPSAMPLE_FACTOR**i)
            levels.append(
                Level(
                    ch * in_mult[i],
                    ch * mult,
                    num_res_blocks,
                    use_attn=res in attn_resolutions,
                    dropout=dropout,
                    resample="down" if i != last else None,
                )
            )
        self.down = nn.ModuleList(levels)
        width = ch * ch_mult[-1]
        self.mid = MidBlock(width, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = conv3x3(width, 2 * z_channels if double_z else z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent -> image; ``up`` is indexed by level but run from the deepest level back to level 0."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        out_ch: int,
        resolution: int,
        z_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = conv3x3(z_channels, width)
        self.mid = MidBlock(width, dropout)
        levels: dict[int, Level] = {}
        block_in = width
        for i in reversed(range(len(ch_mult))):
            res = resolution // (UPSAMPLE_FACTOR**i)
            block_out = ch * ch_mult[i]
            levels[i] = Level(
                block_in,
                block_out,
                num_res_blocks + 1,
                use_attn=res in attn_resolutions,
                dropout=dropout,
                resample="up" if i != 0 else None,
            )
            block_in = block_out
        self.up = nn.ModuleList(levels[i] for i in range(len(ch_mult)))
        self.norm_out = group_norm(block_in)
        self.conv_out = conv3x3(block_in, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


@dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) with logvar clamped as in the official code."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise_scale: float = 1.0) -> torch.Tensor:
        """``mean + noise_scale * std * eps``; eps is drawn on the CPU (as officially) so seeds match across
        devices. ``noise_scale`` 1 is the official posterior; smaller values narrow it toward the mean."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=torch.float32, device="cpu")
        return self.mean + noise_scale * self.std * eps.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """MAR's KL-16 tokenizer; defaults are the official config (see :meth:`kl16`)."""

    def __init__(
        self,
        *,
        ch: int = KL16_CH,
        ch_mult: Sequence[int] = KL16_CH_MULT,
        num_res_blocks: int = KL16_NUM_RES_BLOCKS,
        z_channels: int = KL16_Z_CHANNELS,
        embed_dim: int = KL16_EMBED_DIM,
        in_channels: int = RGB_CHANNELS,
        out_ch: int = RGB_CHANNELS,
        resolution: int = KL16_RESOLUTION,
        double_z: bool = True,
        attn_resolutions_encoder: Sequence[int] = KL16_ATTN_RESOLUTIONS_ENCODER,
        attn_resolutions_decoder: Sequence[int] = KL16_ATTN_RESOLUTIONS_DECODER,
        dropout: float = 0.0,
        latent_scale: float = LATENT_SCALE,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not double_z:
            raise ConfigError(
                "AutoencoderKL needs double_z=True: the posterior is built from mean|logvar moments."
            )
        widths = {ch * m for m in ch_mult}
        if any(w % NORM_GROUPS for w in widths):
            raise ConfigError(
                f"AutoencoderKL widths {sorted(widths)} (ch * ch_mult) must be multiples of the "
                f"{NORM_GROUPS} GroupNorm groups; choose ch as a multiple of {NORM_GROUPS}."
            )
        if latent_scale <= 0:
            raise ConfigError(f"latent_scale must be positive, got {latent_scale}.")
        self.embed_dim = embed_dim
        self.latent_scale = float(latent_scale)
        shared = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            resolution=resolution,
            z_channels=z_channels,
            dropout=dropout,
        )
        self.encoder = Encoder(
            attn_resolutions=tuple(attn_resolutions_encoder),
            in_channels=in_channels,
            double_z=double_z,
            **shared,
        )
        self.decoder = Decoder(attn_resolutions=tuple(attn_resolutions_decoder), out_ch=out_ch, **shared)
        self.quant_conv = conv1x1(2 * z_channels, 2 * embed_dim)
        self.post_quant_conv = conv1x1(embed_dim, z_channels)

    @classmethod
    def kl16(cls, latent_scale: float = LATENT_SCALE) -> AutoencoderKL:
        """The official MAR KL-16 configuration (66.46M parameters, 312 state-dict tensors)."""
        return cls(latent_scale=latent_scale)

    @classmethod
    def from_arch(cls, arch: KLArch, latent_scale: float = LATENT_SCALE) -> AutoencoderKL:
        """An autoencoder of any LDM shape (the tiny testbed's stride-1 one, say)."""
        return cls(**asdict(arch), latent_scale=latent_scale)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, strict: bool = True, **config: object) -> AutoencoderKL:
        """Build (official config unless overridden) and load ``kl16.ckpt`` (a ``{"model": sd}`` dict or a bare sd)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"KL-VAE checkpoint {path} does not exist; download MAR's kl16.ckpt there.")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure means an unusable file
            raise CheckpointError(f"could not read KL-VAE checkpoint {path}: {err}") from err
        state = blob["model"] if isinstance(blob, Mapping) and "model" in blob else blob
        model = cls(**config)  # type: ignore[arg-type]
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not match the KL-VAE architecture (is it MAR's kl16.ckpt?): {err}"
            ) from err
        return model

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Image in ``[-1, 1]`` -> posterior over the (unscaled) latent."""
        return DiagonalGaussian.from_moments(self.encode_moments(x))

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``quant_conv(encoder(x))``: mean and (unclamped) logvar stacked on the channel dim."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> image approximately in ``[-1, 1]``."""
        return self.decoder(self.post_quant_conv(z))

    def encode_to_latent(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """Image -> MAR's scaled latent (a posterior sample, its noise scaled by ``noise_scale``, or its mean
        when ``sample=False``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator, noise_scale) if sample else posterior.mode()
        return z * self.latent_scale

    def decode_tokens_latent(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """MAR's scaled latent (what its sampler produces) -> image (grey decoders are shown as RGB)."""
        image = self.decode(z_scaled / self.latent_scale)
        return image.expand(-1, RGB_CHANNELS, -1, -1) if image.shape[1] == 1 else image

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct ``x``; returns the reconstruction and the posterior, like the official module."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
