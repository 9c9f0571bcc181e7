"""LlamaGen GPT and VQ-16 mechanisms on tiny random models: KV caching, GQA, 2D RoPE, the null class,
checkpoint wrappers, sizes of the released configs and the VQ codebook lookup."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lazygen.errors import CheckpointError, ConfigError
from lazygen.models.llamagen import (
    LLAMAGEN_PRESETS,
    DenseKV,
    LlamaGen,
    LlamaGenArch,
    VQArch,
    VQModel,
    read_gpt_checkpoint,
    read_vq_checkpoint,
)
from lazygen.models.llamagen.gpt import rope_2d_table
from lazygen.weights import load_strict

TOL = 1e-5
TINY = LlamaGenArch(
    dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=10, block_size=16, multiple_of=32
)  # fmt: skip
TINY_VQ = VQArch(
    codebook_size=16, codebook_embed_dim=4, ch=32, ch_mult=(1, 2), z_channels=32, num_res_blocks=1
)

# Reference §1.2 / §2.3: official parameter counts of the released configurations.
GPT_PARAMS = {
    "llamagen_b": 110_888_448,
    "llamagen_l": 342_910_976,
    "llamagen_xl": 774_699_520,
    "llamagen_xxl": 1_410_972_672,
    "llamagen_3b": 3_096_659_200,
}
VQ16_PARAMS = 71_883_403
VQ16_STATE_TENSORS = 344  # 343 parameters + the codebook-usage buffer


def tiny(arch: LlamaGenArch = TINY, seed: int = 0) -> LlamaGen:
    torch.manual_seed(seed)
    return LlamaGen(arch).eval()


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def cached_logits(model: LlamaGen, labels: Tensor, idx: Tensor, caches) -> Tensor:
    """Prefill then one step per image token: logits (B, 1 + S, vocab), aligned with ``model(idx, labels)``."""
    out = [model.prefill(labels, caches)]
    for n in range(idx.shape[1]):
        out.append(model.step(idx[:, n : n + 1], model.cls_token_num + n, caches))
    return torch.cat(out, dim=1)


class AppendKV:
    """A minimal LayerKV that is not DenseKV: compacted entries, ``None`` mask (causal among the new)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, None]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v, None


# ---- KV cache ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(n_kv_head: int | None) -> None:
    model = tiny(replace(TINY, n_kv_head=n_kv_head))
    labels = torch.tensor([3, model.null_class, 0])
    idx = torch.randint(0, TINY.vocab_size, (3, TINY.block_size - 1))
    full = model(idx, labels)
    assert full.shape == (3, TINY.block_size, TINY.vocab_size) and full.dtype == torch.float32
    assert rel_err(cached_logits(model, labels, idx, model.new_caches(3)), full) < TOL
    # a cache that is not DenseKV, and several new tokens per call (prefill + chunks of 5)
    caches = [AppendKV() for _ in model.layers]
    chunks = [model.prefill(labels, caches)]
    for start in range(0, idx.shape[1], 5):
        pos = torch.arange(start, min(start + 5, idx.shape[1])) + model.cls_token_num
        chunks.append(model.decode(idx[:, start : start + 5], pos, caches))
    assert rel_err(torch.cat(chunks, dim=1), full) < TOL


@torch.no_grad()
def test_dense_cache_preallocates_and_masks_causally() -> None:
    model = tiny()
    caches = model.new_caches(2)
    assert len(caches) == TINY.n_layer and isinstance(caches[0], DenseKV)
    assert caches[0].k.shape == (2, TINY.n_head, TINY.seq_len, TINY.head_dim)
    model.prefill(torch.tensor([1, 2]), caches)
    model.step(torch.tensor([[4], [5]]), 1, caches)
    assert caches[0].length == 2
    k, v, mask = caches[0].update(torch.zeros(2, 4, 2, 16), torch.zeros(2, 4, 2, 16), torch.tensor([2, 3]))
    assert k.shape[2] == 4 and mask is None  # appending: older entries visible, the new ones causal
    k, v, mask = caches[0].update(torch.zeros(2, 4, 1, 16), torch.zeros(2, 4, 1, 16), torch.tensor([2]))
    assert k.shape[2] == 4 and mask.tolist() == [[[[True, True, True, False]]]]  # rewound: slot 3 is stale
    with pytest.raises(ValueError, match="does not fit"):
        caches[0].update(torch.zeros(2, 4, 1, 16), torch.zeros(2, 4, 1, 16), torch.tensor([TINY.seq_len]))


@torch.no_grad()
def test_gqa_shares_each_kv_head_with_consecutive_query_heads() -> None:
    """A GQA model equals the MHA model whose k/v projections repeat each kv head (repeat_interleave)."""
    gqa = tiny(replace(TINY, n_kv_head=2))
    assert gqa.layers[0].attention.wqkv.weight.shape == ((4 + 2 * 2) * TINY.head_dim, TINY.dim)
    mha = tiny(TINY, seed=1)
    state = gqa.state_dict()
    hd, dim = TINY.head_dim, TINY.dim
    for i in range(TINY.n_layer):
        q, k, v = state[f"layers.{i}.attention.wqkv.weight"].split([dim, 2 * hd, 2 * hd])
        widen = [t.reshape(2, hd, dim).repeat_interleave(2, dim=0).reshape(dim, dim) for t in (k, v)]
        state[f"layers.{i}.attention.wqkv.weight"] = torch.cat([q, *widen])
    load_strict(mha, state, source="gqa widened to mha")
    labels, idx = torch.tensor([1, 7]), torch.randint(0, TINY.vocab_size, (2, 9))
    assert rel_err(gqa(idx, labels), mha(idx, labels)) < TOL


# ---- 2D RoPE and the class token -----------------------------------------------------------------------
def test_rope_table_layout_matches_the_reference() -> None:
    table = rope_2d_table(LLAMAGEN_PRESETS["llamagen_xl"])  # head_dim 64, 24x24 grid
    assert table.shape == (1 + 576, 32, 2) and table.dtype == torch.float32
    assert not table[0].any()  # class token: cos = sin = 0, not the identity
    row = table[1 + 3 * 24 + 5]  # image token n = 3*24 + 5 sits at position 78
    step = 10000 ** (-1 / 16)
    for pair, angle in ((0, 3.0), (1, 3 * step), (16, 5.0), (17, 5 * step)):
        assert row[pair].tolist() == pytest.approx([math.cos(angle), math.sin(angle)], abs=1e-6)
    assert rope_2d_table(LLAMAGEN_PRESETS["llamagen_3b"]).shape == (577, 50, 2)  # head_dim 100: 25 per axis


@torch.no_grad()
def test_class_token_query_and_key_are_zero() -> None:
    model = tiny()
    x = torch.randn(2, 3, TINY.dim)
    q, k, v = model.layers[0].attention.qkv(x, model.rope(torch.arange(3), x.device))
    assert not q[:, :, 0].any() and not k[:, :, 0].any() and v[:, :, 0].abs().sum() > 0
    assert q[:, :, 1:].abs().sum() > 0


def test_rope_table_stays_fp32_and_out_of_the_state_dict() -> None:
    model = tiny().to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.float32 and "freqs_cis" not in model.state_dict()
    logits = model(torch.randint(0, TINY.vocab_size, (1, 4)), torch.tensor([2]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


# ---- class condition -----------------------------------------------------------------------------------
def test_null_class_row() -> None:
    model = tiny()
    assert model.null_class == TINY.num_classes
    assert model.cls_embedding.embedding_table.weight.shape == (TINY.num_classes + 1, TINY.dim)
    no_null = tiny(replace(TINY, class_dropout_prob=0.0))
    assert no_null.cls_embedding.embedding_table.num_embeddings == TINY.num_classes
    with pytest.raises(ConfigError, match="no null class"):
        _ = no_null.null_class


@pytest.mark.parametrize(
    ("change", "message"),
    [({"block_size": 20}, "square"), ({"model_type": "t2i"}, "c2i"), ({"n_kv_head": 3}, "multiple")],
)
def test_bad_arch_values_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(TINY, **change)


# ---- released sizes (meta device: no memory) -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GPT_PARAMS))
def test_released_gpt_sizes(name: str) -> None:
    arch = LLAMAGEN_PRESETS[name]
    with torch.device("meta"):
        model = LlamaGen(arch)
    assert sum(p.numel() for p in model.parameters()) == GPT_PARAMS[name]
    assert len(model.state_dict()) == 4 + 7 * arch.n_layer


def test_vq16_size_and_keys() -> None:
    with torch.device("meta"):
        vq = VQModel()
    assert sum(p.numel() for p in vq.parameters()) == VQ16_PARAMS
    state = vq.state_dict()
    assert len(state) == VQ16_STATE_TENSORS and state["quantize.codebook_used"].shape == (65536,)
    assert state["decoder.conv_blocks.0.attn.2.q.weight"].shape == (512, 512, 1, 1)
    assert "decoder.conv_blocks.1.res.0.nin_shortcut.weight" in state
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in state


# ---- checkpoint wrappers -------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", "raw", "raw_with_runtime_tensors"])
@torch.no_grad()
def test_every_official_wrapper_loads_strictly(tmp_path: Path, wrapper: str) -> None:
    source = tiny(seed=3)
    state = source.state_dict()
    if wrapper == "raw":
        blob: dict = state
    elif wrapper == "raw_with_runtime_tensors":  # a file saved after sampling
        blob = {**state, "freqs_cis": source.freqs_cis, "layers.0.attention.kv_cache.k_cache": torch.zeros(1)}
    else:
        blob = {wrapper: state, "args": argparse.Namespace(gpt_model="GPT-B"), "steps": 10}
    path = tmp_path / "c2i.pt"
    torch.save(blob, path)
    model = tiny(seed=4)
    load_strict(model, read_gpt_checkpoint(path), source=str(path))
    idx, labels = torch.randint(0, TINY.vocab_size, (1, 5)), torch.tensor([6])
    assert torch.equal(model(idx, labels), source(idx, labels))


def test_missing_or_foreign_weights_fail_clearly(tmp_path: Path) -> None:
    state = tiny().state_dict()
    del state["norm.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        load_strict(tiny(), state, source="partial")
    vq_path = tmp_path / "vq.pt"
    torch.save({"model": VQModel(TINY_VQ).state_dict()}, vq_path)
    with pytest.raises(CheckpointError, match="no LlamaGen GPT weights"):
        read_gpt_checkpoint(vq_path)
    load_strict(VQModel(TINY_VQ), read_vq_checkpoint(vq_path), source=str(vq_path))


# ---- VQ ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_vq_decodes_codes_with_an_l2_normalised_codebook() -> None:
    torch.manual_seed(0)
    vq = VQModel(TINY_VQ).eval()
    codes = torch.randint(0, TINY_VQ.codebook_size, (2, 9))
    images = vq.decode_code(codes, (2, TINY_VQ.codebook_embed_dim, 3, 3))
    assert images.shape == (2, 3, 3 * TINY_VQ.downsample, 3 * TINY_VQ.downsample)
    vq.quantize.embedding.weight.mul_(7.0)  # stored rows need not be unit norm: lookup normalises
    assert torch.allclose(vq.decode_code(codes), images, atol=1e-5)
    unit = vq.decode(codes)
    assert unit.min() >= 0 and unit.max() <= 1
    assert torch.allclose(unit, ((images + 1) / 2).clamp(0, 1), atol=1e-5)


@torch.no_grad()
def test_vq_encode_picks_the_nearest_code() -> None:
    torch.manual_seed(0)
    vq = VQModel(TINY_VQ).eval()
    codes = torch.randint(0, TINY_VQ.codebook_size, (1, 4))
    book = vq.quantize.lookup(codes).reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    assert torch.equal(vq.quantize.nearest(book * 3.0), codes)
    side = 8 // TINY_VQ.downsample
    assert vq.encode(torch.rand(1, 3, 8, 8) * 2 - 1).shape == (1, side * side)
