"""FLOP counting with ``torch.utils.flop_counter``, patched for the ops it misses.

Why a wrapper: ``FlopCounterMode`` counts the aten ops that *actually execute*, which is what dynamic
caching needs (a skipped block costs 0), but on torch 2.13 its registry misses several CPU kernels, so
counts silently drop to 0:

* ``F.scaled_dot_product_attention`` on CPU dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``
  (and its ``_backward``), which is not registered (pytorch issue 195460). On the ``meta`` device the
  same call goes through the math path (two ``aten.bmm``), which *is* counted; the formula added here
  uses the registered SDPA formula, so CPU, meta and CUDA agree on the forward. (Backward differs: the
  registered fused-kernel backward formula counts the score recompute, 2.5x the forward, while the meta
  math path's autograd runs 4 bmm's, 2x.)
* ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` in eval mode without grad take a fused CPU
  fast path (``aten._native_multi_head_attention``, ``aten._transformer_encoder_layer_fwd``) that counts 0.
* ``aten.mv``, ``aten.addmv``, ``aten.dot``, ``aten.vdot``, ``aten.addbmm``, ``aten._addmm_activation``,
  and the backend-specific SDPA kernels ``_scaled_dot_product_fused_attention_overrideable`` and
  ``_scaled_dot_product_attention_math_for_mps`` are not registered either.

Convention (the registry's): FLOPs = 2 x MACs; elementwise ops, softmax, norms and activations count 0;
causal or masked attention counts as dense (an upper bound), exactly as the registered SDPA formulas do.

Counting on the ``meta`` device (shapes only, no compute) gives the same numbers as on CPU, so FLOPs of
big models can be counted without memory or time. Nested (jagged) tensors are not supported by the
added formulas. Count in eager mode, as a separate pass, never inside timed runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

FLOPS_PER_MAC = 2  # one multiply-add = 2 FLOPs, the torch flop_counter convention
GLOBAL_KEY = "Global"  # FlopCounterMode's key for "everything, whatever module ran it"
DEFAULT_MODULE_DEPTH = 2  # root module + its direct children, e.g. "MAR" and "MAR.encoder_blocks"
KV_PROJECTIONS = 2  # k and v each get an embed_dim x embed_dim projection

Shape = Sequence[int]
aten = torch.ops.aten


def _numel(shape: Shape) -> int:
    return math.prod(int(s) for s in shape)


try:  # Reuse torch's own formulas so that patched and registered ops count alike.
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
except ImportError:  # pragma: no cover - only on torch versions that renamed the helpers

    def sdpa_flop_count(query_shape: Shape, key_shape: Shape, value_shape: Shape) -> int:
        """Two bmm's: scores = q @ k^T and out = scores @ v (dense, GQA-aware)."""
        b, h_q, s_q, d_q = query_shape
        s_k, d_v = key_shape[-2], value_shape[-1]
        return FLOPS_PER_MAC * b * h_q * s_q * s_k * (d_q + d_v)

    def sdpa_backward_flop_count(
        grad_out_shape: Shape, query_shape: Shape, key_shape: Shape, value_shape: Shape
    ) -> int:
        """Four bmm's: grad_v, grad_scores, grad_q, grad_k (twice the forward)."""
        b, h_q, s_q, d_q = query_shape
        s_k, d_v = key_shape[-2], value_shape[-1]
        return 2 * FLOPS_PER_MAC * b * h_q * s_q * s_k * (d_q + d_v)


def _sdpa_forward_flop(
    query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """Forward SDPA kernels whose first three arguments are q, k, v in (B, H, S, D)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(
    grad_out_shape: Shape,
    query_shape: Shape,
    key_shape: Shape,
    value_shape: Shape,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """Backward SDPA kernels whose first four arguments are grad_out, q, k, v."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _mv_flop(mat_shape: Shape, vec_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """(M, K) @ (K,): M*K MACs."""
    return FLOPS_PER_MAC * _numel(mat_shape)


def _addmv_flop(
    self_shape: Shape, mat_shape: Shape, vec_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return _mv_flop(mat_shape, vec_shape)


def _dot_flop(a_shape: Shape, b_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """(K,) . (K,): K MACs."""
    return FLOPS_PER_MAC * _numel(a_shape)


def _addmm_activation_flop(
    self_shape: Shape, a_shape: Shape, b_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """addmm fused with ReLU/GELU: the matmul part only (activations count 0)."""
    m, k = a_shape
    return FLOPS_PER_MAC * m * k * b_shape[1]


def _addbmm_flop(
    self_shape: Shape, a_shape: Shape, b_shape: Shape, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """Batched (B, M, K) @ (B, K, N) summed over B: the same MACs as bmm."""
    b, m, k = a_shape
    return FLOPS_PER_MAC * b * m * k * b_shape[2]


def _mha_flop(query_shape: Shape, key_shape: Shape, embed_dim: int) -> int:
    """Packed-projection multi-head attention: q/k/v/out projections plus dense attention.

    Heads do not change the count: sum over heads of (Sq*Sk*head_dim) = Sq*Sk*embed_dim.
    """
    rows_q = _numel(query_shape[:-1])  # batch * Sq
    rows_k = _numel(key_shape[:-1])  # batch * Sk
    batch = _numel(query_shape[:-2])
    s_q, s_k = query_shape[-2], key_shape[-2]
    q_and_out_proj = 2 * FLOPS_PER_MAC * rows_q * embed_dim * embed_dim
    kv_proj = KV_PROJECTIONS * FLOPS_PER_MAC * rows_k * embed_dim * embed_dim
    attention = sdpa_flop_count(
        (batch, 1, s_q, embed_dim), (batch, 1, s_k, embed_dim), (batch, 1, s_k, embed_dim)
    )
    return q_and_out_proj + kv_proj + attention


def _native_mha_flop(
    query_shape: Shape,
    key_shape: Shape,
    value_shape: Shape,
    embed_dim: int,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """``aten._native_multi_head_attention`` (nn.MultiheadAttention's fused inference path)."""
    return _mha_flop(query_shape, key_shape, embed_dim)


def _transformer_encoder_layer_flop(
    src_shape: Shape,
    embed_dim: int,
    num_heads: int,
    qkv_weight_shape: Shape,
    qkv_bias_shape: Shape,
    proj_weight_shape: Shape,
    proj_bias_shape: Shape,
    use_gelu: bool,
    norm_first: bool,
    eps: float,
    norm_weight_1_shape: Shape,
    norm_bias_1_shape: Shape,
    norm_weight_2_shape: Shape,
    norm_bias_2_shape: Shape,
    ffn_weight_1_shape: Shape,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """``aten._transformer_encoder_layer_fwd``: self-attention plus the two FFN linears."""
    hidden = ffn_weight_1_shape[0]
    ffn = 2 * FLOPS_PER_MAC * _numel(src_shape[:-1]) * embed_dim * hidden
    return _mha_flop(src_shape, src_shape, embed_dim) + ffn


def _resolve(name: str) -> Any | None:
    """The aten overload packet ``name``, or None where this torch build lacks it."""
    try:
        return getattr(aten, name)
    except (AttributeError, RuntimeError):
        return None


_EXTRA_FORMULAS: dict[str, Callable[..., int]] = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward_flop,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flop,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa_forward_flop,
    "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward_flop,
    "_scaled_dot_product_attention_math_for_mps": _sdpa_forward_flop,
    "_native_multi_head_attention": _native_mha_flop,
    "_transformer_encoder_layer_fwd": _transformer_encoder_layer_flop,
    "mv": _mv_flop,
    "addmv": _addmv_flop,
    "dot": _dot_flop,
    "vdot": _dot_flop,
    "addbmm": _addbmm_flop,
    "_addmm_activation": _addmm_activation_flop,
}


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """The ``custom_mapping`` for ``FlopCounterMode``: formulas for ops its registry misses."""
    mapping: dict[Any, Callable[..., int]] = {}
    for name, formula in _EXTRA_FORMULAS.items():
        op = _resolve(name)
        if op is not None:
            mapping[op] = formula
    return mapping


@dataclass(frozen=True)
class FlopCount:
    """What :func:`count_flops` measured.

    Attributes:
        output: whatever ``fn`` returned.
        total: all counted FLOPs (2 x MACs).
        by_module: FLOPs per module path, up to the requested depth (root class name first, e.g.
            ``"MAR"``, ``"MAR.encoder_blocks"``). A module's count includes its children's; containers
            that are iterated rather than called (``nn.ModuleList``) get the sum of their members.
        by_op: FLOPs per aten op, e.g. ``{"aten.addmm": ..., "aten.bmm": ...}``.
    """

    output: Any
    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)


def _prefix(name: str, level: int) -> str:
    return ".".join(name.split(".")[:level])


def _level(name: str) -> int:
    return name.count(".") + 1


def _module_totals(module_counts: Mapping[str, int], depth: int) -> dict[str, int]:
    """FLOPs per module path up to ``depth``, including paths of containers that never ran.

    ``FlopCounterMode`` only tracks modules whose ``forward`` ran, so an ``nn.ModuleList`` such as
    ``MAR.encoder_blocks`` (iterated, never called) has no entry of its own. Such a path gets the sum of
    its highest tracked descendants: each tracked count already includes its own descendants, and the
    highest ones are disjoint subtrees, so nothing is counted twice.
    """
    paths = {
        _prefix(name, level) for name in module_counts for level in range(1, min(depth, _level(name)) + 1)
    }
    totals: dict[str, int] = {}
    for path in paths:
        if path in module_counts:
            totals[path] = module_counts[path]
            continue
        level = _level(path)
        totals[path] = sum(
            flops
            for name, flops in module_counts.items()
            if name.startswith(path + ".")
            and not any(_prefix(name, between) in module_counts for between in range(level + 1, _level(name)))
        )
    return totals


def _name_modules(counter: FlopCounterMode, roots: Mapping[str, torch.nn.Module]) -> None:
    """Give the counter's module tracker full paths up front (``MAR.decoder_blocks.3.attn``).

    The tracker names a module by the first parent it sees entered; code that calls a model's methods
    rather than the model itself (samplers, cache policies) would leave modules named by class alone.
    """
    known = getattr(getattr(counter, "mod_tracker", None), "_known_modules", None)
    if known is None:  # pragma: no cover - a torch version with another tracker
        return
    for root_name, root in roots.items():
        for name, module in root.named_modules():
            known[module] = f"{root_name}.{name}" if name else root_name


def count_flops(
    fn: Callable[[], Any],
    depth: int = DEFAULT_MODULE_DEPTH,
    custom_mapping: Mapping[Any, Callable[..., int]] | None = None,
    roots: Mapping[str, torch.nn.Module] | None = None,
) -> FlopCount:
    """Run ``fn()`` once under ``FlopCounterMode`` (patched for missing ops) and return its FLOPs.

    Args:
        fn: a zero-argument callable, e.g. ``lambda: model(x)``. It may run on ``meta`` tensors.
        depth: deepest module path kept in ``by_module`` (1 = root modules only).
        custom_mapping: extra ``{aten op packet: formula}`` entries; they override the built-in ones
            (use it e.g. to count sparse attention by kept keys).
        roots: ``{name: module}`` whose submodules are reported under ``name.<path>`` however they
            are called.

    Returns:
        A :class:`FlopCount`; ``total`` is an int in the FLOPs = 2 x MACs convention.
    """
    mapping = {**extra_flop_formulas(), **(custom_mapping or {})}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        _name_modules(counter, roots or {})
        output = fn()
    counts = counter.get_flop_counts()
    by_op = {str(op): int(flops) for op, flops in counts.get(GLOBAL_KEY, {}).items()}
    module_counts = {name: int(sum(ops.values())) for name, ops in counts.items() if name != GLOBAL_KEY}
    by_module = _module_totals(module_counts, depth)
    return FlopCount(output=output, total=int(counter.get_total_flops()), by_module=by_module, by_op=by_op)
