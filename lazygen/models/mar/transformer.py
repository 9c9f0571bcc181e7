"""Pre-norm ViT block with the key names of timm 0.9.12's ``Block`` (as used by the official MAR).

The block exposes two mechanisms beyond a plain forward: attention whose keys/values may come from a
different (larger) set of rows than the queries, and a row selection between attention and MLP. Cache
policies use them to recompute only some tokens while the others still take part in attention through
cached keys/values; the block itself decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6

# Called with the freshly computed keys and values (N, heads, rows, head_dim) of the rows being run;
# returns the keys and values to attend over (e.g. with cached entries of other rows merged in).
KVHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    """Multi-head bidirectional self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, L, D) -> q, k, v each (N, heads, L, head_dim)."""
        n, length, _ = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of q (N, H, Lq, hd) over k, v (N, H, Lk, hd), projected back to (N, Lq, D)."""
        out = F.scaled_dot_product_attention(q, k, v)
        n, _, lq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(n, lq, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, kv: KVHook | None = None) -> torch.Tensor:
        """Self-attention of the rows of x; ``kv`` may swap in other keys/values (rows not recomputed)."""
        q, k, v = self.qkv_heads(x)
        if kv is not None:
            k, v = kv(k, v)
        return self.attend(q, k, v)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (dropout is a training-only no-op and carries no weights)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``: no qk-norm, no LayerScale, no drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        *,
        kv: KVHook | None = None,
        select: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

        ``kv`` may swap in other keys/values (rows that are not recomputed take part through cached
        ones); ``select`` sees the hidden rows between attention and MLP and may return a subset of them,
        which the MLP then runs on alone.
        """
        x = x + self.attn(self.norm1(x), kv)
        if select is not None:
            x = select(x)
        return x + self.mlp(self.norm2(x))
