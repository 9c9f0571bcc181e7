"""FLOP counts against closed forms, on CPU and on the meta device (shapes only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lazygen.metrics.flops import FLOPS_PER_MAC, count_flops, extra_flop_formulas

DEVICES = ["cpu", "meta"]
B, H, SQ, SK, D = 2, 4, 8, 10, 16


def sdpa_closed_form(b: int, h: int, sq: int, sk: int, d: int) -> int:
    """q @ k^T and p @ v: two bmm's of b*h*sq*sk*d MACs each."""
    return 2 * FLOPS_PER_MAC * b * h * sq * sk * d


class TinyBlock(nn.Module):
    """A pre-norm transformer block written the way MAR/LlamaGen write theirs (SDPA, no nn.MHA)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(1))


def tiny_net_closed_form(batch: int, img: int, dim: int = 32, depth: int = 2, mlp_ratio: int = 4) -> int:
    tokens = (img // 4) ** 2
    rows = batch * tokens
    stem = FLOPS_PER_MAC * rows * dim * 3 * 4 * 4
    linears = FLOPS_PER_MAC * rows * dim * dim * (3 + 1 + 2 * mlp_ratio)
    attention = sdpa_closed_form(batch, 1, tokens, tokens, dim)  # heads * head_dim = dim
    head = FLOPS_PER_MAC * batch * dim * 10
    return stem + depth * (linears + attention) + head


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_matches_closed_form(device: str) -> None:
    q = torch.randn(B, H, SQ, D, device=device)
    k = torch.randn(B, H, SK, D, device=device)
    v = torch.randn(B, H, SK, D, device=device)
    with torch.no_grad():
        result = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert result.total == sdpa_closed_form(B, H, SQ, SK, D)


def test_sdpa_cpu_uses_the_patched_op() -> None:
    """Guards the reason for the patch: without it, CPU SDPA would count 0 on torch 2.13."""
    q = torch.randn(B, H, SQ, D)
    result = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert result.by_op, "SDPA on CPU counted nothing"
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in extra_flop_formulas()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", [{"is_causal": True}, {"enable_gqa": True}])
def test_sdpa_variants_count_dense(device: str, kwargs: dict) -> None:
    """Causal and GQA attention count as dense query-head attention, on CPU and meta alike."""
    kv_heads = H // 2 if kwargs.get("enable_gqa") else H
    q = torch.randn(B, H, SQ, D, device=device)
    kv = torch.randn(B, kv_heads, SQ, D, device=device)
    with torch.no_grad():
        result = count_flops(lambda: F.scaled_dot_product_attention(q, kv, kv, **kwargs))
    assert result.total == sdpa_closed_form(B, H, SQ, SQ, D)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_2mnk(device: str, bias: bool) -> None:
    m, k, n = 12, 16, 24
    layer = nn.Linear(k, n, bias=bias, device=device)
    x = torch.randn(3, m // 3, k, device=device)
    with torch.no_grad():
        result = count_flops(lambda: layer(x))
    assert result.total == 2 * m * n * k


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_and_bmm(device: str) -> None:
    a = torch.randn(2, 3, 4, 5, device=device)
    b = torch.randn(2, 3, 5, 6, device=device)
    assert count_flops(lambda: a @ b).total == FLOPS_PER_MAC * 2 * 3 * 4 * 5 * 6
    assert count_flops(lambda: torch.bmm(a[0], b[0])).total == FLOPS_PER_MAC * 3 * 4 * 5 * 6
    mat, vec = torch.randn(4, 5, device=device), torch.randn(5, device=device)
    assert count_flops(lambda: mat @ vec).total == FLOPS_PER_MAC * 4 * 5


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d(device: str) -> None:
    c_in, c_out, ksize, n, size = 3, 8, 3, 2, 16
    conv = nn.Conv2d(c_in, c_out, ksize, padding=1, device=device)
    x = torch.randn(n, c_in, size, size, device=device)
    with torch.no_grad():
        result = count_flops(lambda: conv(x))
    assert result.total == FLOPS_PER_MAC * n * size * size * c_out * c_in * ksize * ksize


def test_tiny_transformer_cpu_equals_meta_and_closed_form() -> None:
    batch, img = 2, 16
    torch.manual_seed(0)
    net_cpu = TinyNet().eval()
    with torch.device("meta"):
        net_meta = TinyNet().eval()
    with torch.no_grad():
        cpu = count_flops(lambda: net_cpu(torch.randn(batch, 3, img, img)))
        meta = count_flops(lambda: net_meta(torch.randn(batch, 3, img, img, device="meta")))
    assert cpu.total == meta.total == tiny_net_closed_form(batch, img)
    assert cpu.by_module == meta.by_module
    assert cpu.by_module["TinyNet"] == cpu.total
    assert (
        cpu.by_module["TinyNet.blocks"]
        == cpu.total - cpu.by_module["TinyNet.stem"] - cpu.by_module["TinyNet.head"]
    )
    assert "TinyNet.blocks.0" not in cpu.by_module  # deeper than the default depth
    assert (
        "TinyNet.blocks.0" in count_flops(lambda: net_cpu(torch.randn(batch, 3, img, img)), depth=3).by_module
    )
    assert meta.output.device.type == "meta"


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.MultiheadAttention(32, 4, batch_first=True),
        lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
    ],
    ids=["mha", "encoder_layer"],
)
def test_fused_cpu_inference_paths_match_meta(build) -> None:
    """nn.MHA / nn.TransformerEncoderLayer take a fused CPU kernel in eval+no_grad; meta decomposes."""
    counts = []
    for device in DEVICES:
        with torch.device(device):
            module = build().eval()
            x = torch.randn(2, 6, 32)
        with torch.no_grad():
            run = (
                (lambda m=module, x=x: m(x, x, x))
                if isinstance(module, nn.MultiheadAttention)
                else (lambda m=module, x=x: m(x))
            )
            counts.append(count_flops(run).total)
    assert counts[0] == counts[1] > 0


def test_custom_mapping_overrides() -> None:
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    result = count_flops(lambda: a @ b, custom_mapping={torch.ops.aten.mm: lambda *args, **kwargs: 7})
    assert result.total == 7


def test_module_totals_fill_in_containers_without_double_counting() -> None:
    from lazygen.metrics.flops import _module_totals

    tracked = {"Net": 100, "Net.blocks.0": 40, "Net.blocks.0.attn": 30, "Net.blocks.1": 50, "Net.head": 10}
    assert _module_totals(tracked, depth=2) == {"Net": 100, "Net.blocks": 90, "Net.head": 10}
    deep = {"Net": 10, "Net.blocks.0.a": 4, "Net.blocks.0.b": 6}
    assert _module_totals(deep, depth=3) == {"Net": 10, "Net.blocks": 10, "Net.blocks.0": 10}
    assert _module_totals(deep, depth=1) == {"Net": 10}


def test_memoised_meta_count_of_a_whole_sampling_run_equals_a_real_count() -> None:
    """shape_memo shares counts between same-shaped blocks and scales the diffusion chain by rows; the
    result must be exactly what running every op for real counts, in total and per module."""
    from helpers import compose_cfg

    from lazygen.config import validate
    from lazygen.metrics.perf import measure_flops
    from lazygen.run import make_generator

    run = validate(compose_cfg(
        "model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
        "model.arch.encoder_depth=3", "model.arch.decoder_depth=2", "model.arch.diffloss_d=2",
        "model.arch.diffloss_w=32", "sampler.num_iter=6", "sampler.diffusion_steps=4",
    ))  # fmt: skip
    labels, seeds = torch.tensor([1, 7, 3]), [0, 1, 2]
    meta = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "meta")
    real = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "real")
    assert meta.device == "meta" and real.device == "cpu"
    assert meta.tflops_per_img == real.tflops_per_img > 0
    assert meta.by_module == real.by_module
