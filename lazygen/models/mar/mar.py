"""The MAR network (masked autoregressive transformer with a per-token diffusion head).

One definition for every size; parameter names match the official checkpoints. The model offers
mechanisms only: class conditions (and the learned "fake" class for CFG), the MAE-style encoder over the
buffer plus *known* tokens, the decoder over all positions, and the diffusion head. Visible rows are
passed as index tensors, in the row-major order of the official boolean gather; index tensors keep every
shape static, so the same code also runs on the meta device for exact FLOP counting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lazygen.models.compiling import compile_part
from lazygen.models.mar.diffloss import DiffLoss
from lazygen.models.mar.transformer import LAYER_NORM_EPS, Block

POS_EMBED_INIT_STD = 0.02

# A policy drives the model's block loops through these instead of copying them: ``hooks(j)`` gives block j's
# keyword arguments (``kv``, ``select``: see Block.forward), ``observe(j, x)`` sees block j's output.
BlockHooks = Callable[[int], dict[str, Any]]
BlockObserver = Callable[[int, torch.Tensor], None]


def _plain_stack(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


@dataclass
class MARArch:
    """The official ``MAR(...)`` constructor arguments that shape the network."""

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    buffer_size: int = 64
    class_num: int = 1000
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.seq_h**2

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size**2


class MAR(nn.Module):
    def __init__(self, arch: MARArch) -> None:
        super().__init__()
        self.arch = arch
        enc, dec = arch.encoder_embed_dim, arch.decoder_embed_dim
        total = arch.buffer_size + arch.seq_len
        self.class_emb = nn.Embedding(arch.class_num, enc)
        self.fake_latent = nn.Parameter(torch.zeros(1, enc))
        self.z_proj = nn.Linear(arch.token_embed_dim, enc, bias=True)
        self.z_proj_ln = nn.LayerNorm(enc, eps=LAYER_NORM_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, total, enc))
        self.encoder_blocks = nn.ModuleList(
            Block(enc, arch.encoder_num_heads, arch.mlp_ratio) for _ in range(arch.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(enc, eps=LAYER_NORM_EPS)
        self.decoder_embed = nn.Linear(enc, dec, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, total, dec))
        self.decoder_blocks = nn.ModuleList(
            Block(dec, arch.decoder_num_heads, arch.mlp_ratio) for _ in range(arch.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dec, eps=LAYER_NORM_EPS)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, arch.seq_len, dec))
        self.diffloss = DiffLoss(
            target_channels=arch.token_embed_dim,
            z_channels=dec,
            width=arch.diffloss_w,
            depth=arch.diffloss_d,
            num_sampling_steps=arch.num_sampling_steps,
        )
        self.initialize_weights()
        self._stack = _plain_stack  # runs a block stack without hooks; compile_parts swaps in a compiled one

    @property
    def seq_len(self) -> int:
        return self.arch.seq_len

    @property
    def buffer_size(self) -> int:
        return self.arch.buffer_size

    @property
    def token_dim(self) -> int:
        return self.arch.token_embed_dim

    def initialize_weights(self) -> None:
        """Random init as the official code (small normals for embeddings, xavier Linears, unit LayerNorms)."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token):
            nn.init.normal_(p, std=POS_EMBED_INIT_STD)
        for p in (
            self.encoder_pos_embed_learned,
            self.decoder_pos_embed_learned,
            self.diffusion_pos_embed_learned,
        ):
            nn.init.normal_(p, std=POS_EMBED_INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- conditions -------------------------------------------------------------------------------
    def class_condition(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, D) class vectors; ``labels=None`` gives the unconditional (fake) vector."""
        if labels is None:
            return self.fake_latent.expand(batch, -1)
        return self.class_emb(labels)

    def null_condition(self, batch: int) -> torch.Tensor:
        return self.fake_latent.expand(batch, -1)

    # ---- transformer --------------------------------------------------------------------------------
    # The encoder sees the buffer slots and the known tokens only. Which rows those are is given as
    # ``rows`` (N, buffer + n_known): indices into the flattened (N * (buffer + seq_len)) sequence, in
    # row-major order. With equal known counts per image, row i of ``rows`` belongs to image i; the
    # official code flattens before reshaping, so with unequal counts images share rows (reproduced here).
    def visible_rows(self, known: torch.Tensor) -> torch.Tensor:
        """Flat sequence rows (N, buffer + n) of the buffer and of the known positions (N, n), ascending."""
        n = known.shape[0]
        total = self.buffer_size + self.seq_len
        buffer = torch.arange(self.buffer_size, device=known.device).expand(n, -1)
        per_image = torch.cat([buffer, known + self.buffer_size], dim=1)
        return per_image + total * torch.arange(n, device=known.device).unsqueeze(1)

    def visible_rows_from_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Official-style mask (N, L), 1 = unknown -> flat visible rows (N, -1), as the official reshape."""
        n = mask.shape[0]
        buffer = torch.zeros(n, self.buffer_size, dtype=torch.bool, device=mask.device)
        visible = torch.cat([buffer, mask.bool()], dim=1).logical_not().flatten()
        return visible.nonzero().squeeze(1).reshape(n, -1)

    def encoder_input(self, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Embedded visible rows (N, buffer + n_known, D), before the encoder blocks."""
        x_tokens = self.z_proj(tokens)
        x_buffer = cond.unsqueeze(1).expand(-1, self.buffer_size, -1).to(x_tokens.dtype)
        x = self.z_proj_ln(torch.cat([x_buffer, x_tokens], dim=1) + self.encoder_pos_embed_learned)
        return x.flatten(0, 1)[rows]

    def compile_parts(self, mode: str) -> None:
        """torch.compile the block stacks (when run without hooks) and the diffusion head's step."""
        if self._stack is not _plain_stack:
            return
        self._stack = compile_part(_plain_stack, mode)
        self.diffloss.net.compile_step(mode)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor, hooks: BlockHooks | None,
                    observe: BlockObserver | None) -> torch.Tensor:  # fmt: skip
        if hooks is None and observe is None:
            return self._stack(blocks, x)
        for j, block in enumerate(blocks):
            x = block(x, **hooks(j)) if hooks is not None else block(x)
            if observe is not None:
                observe(j, x)
        return x

    def run_encoder(self, x: torch.Tensor, hooks: BlockHooks | None = None,
                    observe: BlockObserver | None = None) -> torch.Tensor:  # fmt: skip
        """The encoder blocks over embedded rows x (N, R, D), then its norm."""
        return self.encoder_norm(self._run_blocks(self.encoder_blocks, x, hooks, observe))

    def forward_encoder(self, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.run_encoder(self.encoder_input(tokens, rows, cond))

    def decoder_input(self, encoded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Decoder sequence (N, buffer + seq_len, D): mask tokens with the encoded rows scattered in."""
        x = self.decoder_embed(encoded)
        n, _, width = x.shape
        total = self.buffer_size + self.seq_len
        full = self.mask_token.to(x.dtype).reshape(1, width).expand(n * total, width)
        full = full.index_copy(0, rows.flatten(), x.reshape(-1, width))
        return full.reshape(n, total, width) + self.decoder_pos_embed_learned

    def decoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, drop the buffer, add the diffusion pos-emb: the per-position conditions (N, L, D)."""
        x = self.decoder_norm(x)[:, self.buffer_size :]
        return x + self.diffusion_pos_embed_learned

    def decoder_output_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Final norm and diffusion pos-emb of the hidden rows x (N, n, D) of token ``positions`` (N, n)."""
        pos = self.diffusion_pos_embed_learned[0][positions]
        return self.decoder_norm(x) + pos

    def run_decoder(self, x: torch.Tensor, hooks: BlockHooks | None = None,
                    observe: BlockObserver | None = None) -> torch.Tensor:  # fmt: skip
        """The decoder blocks over a decoder sequence x (N, R, D), before the final norm."""
        return self._run_blocks(self.decoder_blocks, x, hooks, observe)

    def forward_decoder(self, encoded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.decoder_output(self.run_decoder(self.decoder_input(encoded, rows)))

    def conditions(self, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Encoder + decoder: per-position diffusion conditions z (N, seq_len, D)."""
        return self.forward_decoder(self.forward_encoder(tokens, rows, cond), rows)

    # ---- latent grid <-> tokens ---------------------------------------------------------------------
    def patchify(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, C * p * p), row-major over the token grid."""
        p, h = self.arch.patch_size, self.arch.seq_h
        n, c = latent.shape[:2]
        x = latent.reshape(n, c, h, p, h, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, h * h, c * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, C * p * p) -> (N, C, H, W)."""
        p, h = self.arch.patch_size, self.arch.seq_h
        n = tokens.shape[0]
        c = self.arch.vae_embed_dim
        x = tokens.reshape(n, h, h, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, h * p, h * p)
