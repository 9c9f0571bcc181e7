"""The LlamaGen class-conditional GPT (FoundationVision/LlamaGen, ``c2i``).

A Llama-style decoder-only transformer over ``[class token, image tokens]``: RMSNorm, SwiGLU, no biases,
a fused ``wqkv`` projection, grouped-query attention and a 2D rotary embedding whose rows for the class
token are all zero (so its q and k are exactly zero in every layer). Module and parameter names are the
official ones, so released checkpoints load with ``strict=True``.

The model offers mechanisms only. Decoding goes through a per-layer :class:`LayerKV` cache object: the
model hands each layer's new keys (after RoPE) and values to it, and attends to whatever keys, values
and mask it returns. :class:`DenseKV` is the plain full cache; a cache policy (e.g. sparse KV selection)
supplies its own ``LayerKV`` and decides which entries attention sees, without touching the model.

Positions are absolute: ``0 .. cls_token_num - 1`` hold the class embedding(s), image token ``n`` (raster
order) sits at ``cls_token_num + n``. Keep position tensors on the CPU: they are bookkeeping, and caches
read them on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazygen.errors import CheckpointError, ConfigError
from lazygen.weights.checkpoint import read_state_dict

INIT_STD = 0.02  # official initializer_range (random-init runs only)

# Where official files keep the GPT weights, in the order the official sampler tries them: DDP
# training checkpoints ("model"), DeepSpeed ("module"), others ("state_dict"). FSDP files (XXL, 3B)
# are the bare state dict, which read_state_dict accepts when none of these keys holds one.
CHECKPOINT_KEYS: tuple[str, ...] = ("model", "module", "state_dict")
# Runtime tensors that a file saved after sampling may carry; they are not weights.
RUNTIME_KEYS: tuple[str, ...] = ("freqs_cis", "causal_mask")
RUNTIME_SUFFIXES: tuple[str, ...] = (".kv_cache.k_cache", ".kv_cache.v_cache")


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n`` (the official FFN width rounding)."""
    return n if n % k == 0 else n + k - n % k


@dataclass
class LlamaGenArch:
    """The official ``ModelArgs`` that shape the c2i network (defaults: GPT-B at 384 px, 24x24 tokens)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: plain multi-head attention (every released model)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = 16384
    cls_token_num: int = 1
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row used for CFG
    # training-time regularisation, the official ModelArgs defaults (identity in eval mode; no parameters)
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    block_size: int = 576  # image tokens: (image_size / 16) ** 2
    model_type: str = "c2i"

    def __post_init__(self) -> None:
        if self.model_type != "c2i":
            raise ConfigError(
                f"model.arch.model_type={self.model_type!r}: only class-conditional 'c2i' is supported."
            )
        if self.cls_token_num != 1:
            raise ConfigError(
                f"model.arch.cls_token_num={self.cls_token_num}: c2i models use exactly 1 class token."
            )
        if self.dim % self.n_head:
            raise ConfigError(f"model.arch.dim={self.dim} is not divisible by n_head={self.n_head}.")
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.arch.n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}."
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"head_dim={self.head_dim} must be a multiple of 4 for the 2D rotary embedding."
            )
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ConfigError(
                f"model.arch.block_size={self.block_size} is not a square token grid; use (image_size/16)**2 "
                "(256 for 256 px, 576 for 384 px)."
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def seq_len(self) -> int:
        """Positions of a full sequence: class token(s) + image tokens."""
        return self.cls_token_num + self.block_size


# Released c2i sizes (official GPT_* factories) at 384 px, the resolution of the official FID recipe.
LLAMAGEN_PRESETS: dict[str, LlamaGenArch] = {
    "llamagen_b": LlamaGenArch(dim=768, n_layer=12, n_head=12),
    "llamagen_l": LlamaGenArch(dim=1024, n_layer=24, n_head=16),
    "llamagen_xl": LlamaGenArch(dim=1280, n_layer=36, n_head=20),
    "llamagen_xxl": LlamaGenArch(dim=1536, n_layer=48, n_head=24),
    "llamagen_3b": LlamaGenArch(dim=3200, n_layer=24, n_head=32),
}


# ---- checkpoints ------------------------------------------------------------------------------------
def official_gpt_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The weights of an unwrapped official state dict, without the runtime tensors some files carry."""
    return {
        key: value
        for key, value in state.items()
        if key not in RUNTIME_KEYS and not key.endswith(RUNTIME_SUFFIXES)
    }


def read_gpt_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read an official GPT file in any of its wrapper formats (DDP/DeepSpeed/plain or bare FSDP)."""
    state = official_gpt_state_dict(read_state_dict(path, prefer=CHECKPOINT_KEYS))
    if "tok_embeddings.weight" not in state:
        raise CheckpointError(
            f"{path} holds no LlamaGen GPT weights (no 'tok_embeddings.weight'); point model.weights.path at "
            "an official c2i_*.pt file."
        )
    return state


# ---- rotary embedding ---------------------------------------------------------------------------------
def rope_2d_table(arch: LlamaGenArch) -> Tensor:
    """(cls_token_num + G*G, head_dim/2, 2) fp32 (cos, sin) per rotation pair, on the CPU.

    Pairs in the first half rotate by the row index, the second half by the column index, with
    frequencies ``base ** (-2k / (head_dim/2))``. The class-token rows are zero (cos = sin = 0), which
    zeroes its q and k: the checkpoints were trained that way.
    """
    half = arch.head_dim // 2
    exponents = torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half
    freqs = 1.0 / (arch.rope_base**exponents)  # (half/2,)
    grid = arch.grid_size
    angles_1d = torch.outer(torch.arange(grid, device="cpu"), freqs)  # (G, half/2)
    rows = angles_1d[:, None, :].expand(-1, grid, -1)
    cols = angles_1d[None, :, :].expand(grid, -1, -1)
    angles = torch.cat([rows, cols], dim=-1).flatten(0, 1)  # (G*G, half), raster order
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(arch.cls_token_num, half, 2, device="cpu"), table])


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate adjacent pairs of x (B, T, heads, hd) by table (T, hd/2, 2), in fp32; returns x's dtype."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(3).type_as(x)


# ---- KV cache protocol -------------------------------------------------------------------------------
class LayerKV(Protocol):
    """One layer's cache. The model calls ``update`` once per forward of that layer.

    ``k``, ``v``: (B, n_kv_head, T_new, head_dim) for the new positions, keys already rotated; ``pos``:
    (T_new,) their absolute positions (CPU, ascending; not necessarily contiguous, and a position may be
    written again, which replaces its entry). Returns the keys and values to attend to
    (B, n_kv_head, M, head_dim) and an optional boolean mask (B or 1, 1 or n_kv_head, T_new, M), True = may
    attend. A ``None`` mask means: every returned entry is visible; with T_new > 1 the new entries must then
    be the last T_new returned, and are causal among themselves (one new entry may sit in any slot).
    ``truncate(length)`` forgets every entry at a position >= ``length`` (parallel decoders roll rejected
    drafts back with it). ``nbytes`` is every byte the cache holds (memory metrics read it).
    """

    @property
    def nbytes(self) -> int: ...

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor | None]: ...

    def truncate(self, length: int) -> None: ...


class DenseKV:
    """The full cache: preallocated buffers, slot = absolute position, as the official KVCache.

    Attention sees the written slots up to the query's position. In raster decoding every slot below the
    newest is written, so no mask is needed (SDPA's fast path). After a rollback (``truncate``) or with
    non-contiguous writes (next-set decoding) the mask hides slots above each query and, unless
    ``attend_unwritten`` is set, slots never written: the official static cache instead lets queries see
    those slots' zero keys and values (an exp(0) share of the softmax mass each; ZipAR's official code).
    """

    def __init__(
        self,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.written = torch.zeros(max_len, dtype=torch.bool)  # bookkeeping on the host, like positions
        self.length = 0  # one past the highest written slot
        self.count = 0  # written slots below ``length``
        self.attend_unwritten = False

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def reset(self) -> None:
        """Forget every entry (the buffers are reused by the next generation)."""
        self.truncate(0)

    def truncate(self, length: int) -> None:
        if length < self.length:
            self.written[length:] = False
            self.length = length
            self.count = int(self.written[:length].sum())

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        end = int(pos.max()) + 1
        if end > self.max_len:
            raise ValueError(f"position {end - 1} does not fit a cache of {self.max_len} slots")
        slots = pos.to(self.k.device)
        self.k[:, :, slots] = k.to(self.k.dtype)
        self.v[:, :, slots] = v.to(self.v.dtype)
        rewound = end < self.length  # stale later slots must be masked out
        contiguous = int(pos[0]) == self.length and end - self.length == len(pos)
        if not contiguous or self.count < self.length:  # a write in or past a hole: recount
            self.written[pos] = True
            self.length = max(self.length, end)
            self.count = int(self.written[: self.length].sum())
        else:
            self.written[self.length : end] = True
            self.count += end - self.length
            self.length = end
        keys, values = self.k[:, :, : self.length], self.v[:, :, : self.length]
        holes = self.count < self.length and not self.attend_unwritten
        if not rewound and not holes and (contiguous or len(pos) == 1):
            return keys, values, None  # the usual case: the new rows last, causal (SDPA's fast path)
        visible = torch.arange(self.length)[None, :] <= pos[:, None]  # (T_new, M)
        if holes:
            visible &= self.written[None, : self.length]
        return keys, values, visible[None, None].to(self.k.device)


# ---- network -------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``x / rms(x)`` computed in fp32 and cast back, *then* scaled by the weight (official order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Grouped-query causal self-attention with 2D RoPE; keys/values may come from a :class:`LayerKV`."""

    def __init__(self, arch: LlamaGenArch) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = arch.n_head, arch.kv_heads, arch.head_dim
        self.wqkv = nn.Linear(arch.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(arch.dim, arch.dim, bias=False)
        self.attn_dropout_p = arch.attn_dropout_p
        self.resid_dropout = nn.Dropout(arch.resid_dropout_p)

    def qkv(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> q (B, H, T, hd), k and v (B, H_kv, T, hd); q and k rotated."""
        b, t, _ = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)
        q = apply_rope(q.view(b, t, self.n_head, self.head_dim), rope)
        k = apply_rope(k.view(b, t, self.n_kv_head, self.head_dim), rope)
        v = v.view(b, t, self.n_kv_head, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q (B, H, T, hd) over k, v (B, H_kv, M, hd) -> (B, T, D) after ``wo``; mask as in LayerKV."""
        groups = self.n_head // self.n_kv_head
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            if mask is not None and mask.shape[1] > 1:  # a mask per KV head
                mask = mask.repeat_interleave(groups, dim=1)
        k, v = k.to(q.dtype), v.to(q.dtype)
        t, m = q.shape[2], k.shape[2]
        if mask is None and 1 < t < m:  # new rows causal among themselves, every older entry visible
            mask = torch.ones(t, m, dtype=torch.bool, device=q.device).tril(m - t)
        dropout = self.attn_dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1,
                                             dropout_p=dropout)  # fmt: skip
        b = q.shape[0]
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)))

    def forward(self, x: Tensor, rope: Tensor, pos: Tensor, cache: LayerKV | None = None) -> Tensor:
        q, k, v = self.qkv(x, rope)
        mask = None
        if cache is not None:
            k, v, mask = cache.update(k, v, pos)
        return self.attend(q, k, v, mask)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``h = x + attn(norm(x))``, ``h + ffn(norm(h))``."""

    def __init__(self, arch: LlamaGenArch) -> None:
        super().__init__()
        self.attention = Attention(arch)
        self.feed_forward = FeedForward(arch.dim, arch.ffn_hidden, arch.ffn_dropout_p)
        self.attention_norm = RMSNorm(arch.dim, arch.norm_eps)
        self.ffn_norm = RMSNorm(arch.dim, arch.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, pos: Tensor, cache: LayerKV | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class ClassEmbedder(nn.Module):
    """Class table with ``num_classes + 1`` rows when trained with label dropout; the last row is null."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class LlamaGen(nn.Module):
    def __init__(self, arch: LlamaGenArch) -> None:
        super().__init__()
        self.arch = arch
        self.cls_embedding = ClassEmbedder(arch.num_classes, arch.dim, arch.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(arch.vocab_size, arch.dim)
        self.tok_dropout = nn.Dropout(arch.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(arch) for _ in range(arch.n_layer))
        self.norm = RMSNorm(arch.dim, arch.norm_eps)
        self.output = nn.Linear(arch.dim, arch.vocab_size, bias=False)
        # A plain attribute, like the official one: not in the state dict, never cast by .to(dtype) (RoPE
        # runs in fp32), built on the CPU even under a meta-device build, moved on first use.
        self.freqs_cis = rope_2d_table(arch)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """N(0, 0.02) for every Linear and Embedding, as officially, except that the output head is not
        zeroed: a random-init model (FLOP, speed and smoke runs) then has non-uniform logits."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=INIT_STD)

    @property
    def cls_token_num(self) -> int:
        return self.arch.cls_token_num

    @property
    def seq_len(self) -> int:
        return self.arch.seq_len

    @property
    def num_image_tokens(self) -> int:
        return self.arch.block_size

    @property
    def null_class(self) -> int:
        """Label of the unconditional (CFG) row of the class table."""
        if self.arch.class_dropout_prob <= 0:
            raise ConfigError(
                "This LlamaGen has no null class (model.arch.class_dropout_prob=0), so CFG is impossible; "
                "the official checkpoints use class_dropout_prob=0.1."
            )
        return self.arch.num_classes

    # ---- mechanisms ---------------------------------------------------------------------------------
    def rope(self, pos: Tensor, device: torch.device) -> Tensor:
        """Rotation rows (T, hd/2, 2) for absolute positions ``pos``."""
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        return self.freqs_cis[pos.to(device)]

    def embed(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D): class labels at positions < cls_token_num, image token ids after."""
        n_cond = int((pos < self.cls_token_num).sum())
        parts = []
        if n_cond:
            parts.append(self.cls_embedding(tokens[:, :n_cond]))
        if n_cond < tokens.shape[1]:
            parts.append(self.tok_embeddings(tokens[:, n_cond:]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def decode(self, tokens: Tensor, pos: Tensor, caches: Sequence[LayerKV] | None = None) -> Tensor:
        """Logits (B, T, vocab) in fp32 for ``tokens`` (B, T) at positions ``pos`` (T,), ascending.

        With ``caches`` (one per layer) each layer attends to what its cache returns; without, the
        tokens attend causally among themselves only (a full forward when ``pos`` starts at 0).
        """
        pos = torch.as_tensor(pos, dtype=torch.long)
        if caches is not None and len(caches) != len(self.layers):
            raise ValueError(f"{len(caches)} caches for {len(self.layers)} layers")
        x = self.tok_dropout(self.embed(tokens, pos))
        rope = self.rope(pos, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, pos, None if caches is None else caches[i])
        return self.output(self.norm(x)).float()

    def forward(self, idx: Tensor, labels: Tensor) -> Tensor:
        """Full causal pass over ``[class, idx]`` (idx: (B, S) image tokens): logits (B, 1 + S, vocab);
        logit i predicts image token i."""
        tokens = torch.cat([labels[:, None].to(idx.dtype), idx], dim=1)
        return self.decode(tokens, torch.arange(tokens.shape[1]))

    def prefill(self, labels: Tensor, caches: Sequence[LayerKV]) -> Tensor:
        """The class-token step at position 0 (labels may be :attr:`null_class`): logits (B, 1, vocab)."""
        return self.decode(labels[:, None], torch.arange(self.cls_token_num), caches)

    def step(self, token_ids: Tensor, pos: int | Tensor, caches: Sequence[LayerKV]) -> Tensor:
        """One image token (B, 1) at absolute position ``pos``: logits (B, 1, vocab)."""
        return self.decode(token_ids, torch.as_tensor(pos, dtype=torch.long).reshape(1), caches)

    def new_caches(
        self,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[DenseKV]:
        """One empty :class:`DenseKV` per layer; defaults: a full sequence, the model's device and dtype."""
        weight = self.tok_embeddings.weight
        return [
            DenseKV(
                batch,
                self.arch.kv_heads,
                max_len or self.seq_len,
                self.arch.head_dim,
                dtype or weight.dtype,
                torch.device(device) if device is not None else weight.device,
            )
            for _ in self.layers
        ]
