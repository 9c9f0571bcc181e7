"""lazygen's LlamaGen GPT and VQ-16 decoder against the official FoundationVision/LlamaGen code (tiny config).

``official_generate`` restates the official ``generate()`` on top of the model's prefill/step API, with
the official order of operations and random draws: CFG on fp32 logits (cond rows first, null class
second, the same token fed to both halves), then temperature, top-k, top-p, softmax and one
``torch.multinomial`` per step from the global RNG. Reproducing the fixture's token ids after
``torch.manual_seed(7)`` checks the KV cache, the null class and that order at once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, load_fixture, to_device
from helpers import rel_err

from lazygen.models.llamagen import LlamaGen, LlamaGenArch, VQArch, VQModel
from lazygen.samplers.ar import filter_logits
from lazygen.weights import load_strict

FIXTURE = FIXTURES / "llamagen_official_tiny.pt"
LOGITS_REL_TOL = 1e-5
VQ_REL_TOL = 1e-4
TEMPERATURE_FLOOR = 1e-5  # official: logits / max(temperature, 1e-5)
GENERATE_RUNS = ("cfg2_topk0", "cfg4_topk10_temp0.9", "nocfg_topp0.8", "cfg1.5_interval20")


@pytest.fixture(scope="module")
def fixture() -> dict:
    return load_fixture(FIXTURE.name)


@pytest.fixture(scope="module")
def model(fixture: dict, device: torch.device) -> LlamaGen:
    net = LlamaGen(LlamaGenArch(**fixture["config"])).eval()
    load_strict(net, fixture["state_dict"], source=str(FIXTURE))
    return net.to(device)


# ---- the official generate(), restated on lazygen's API ------------------------------------------------
def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Last-position logits (B, T, V) -> one token per row (B, 1), one multinomial draw."""
    last = logits[:, -1, :] / max(temperature, TEMPERATURE_FLOOR)
    if top_k > 0 or top_p < 1.0:
        last = filter_logits(last, top_k, top_p)
    return torch.multinomial(F.softmax(last, dim=-1), num_samples=1)


def guide(logits: torch.Tensor, cfg_scale: float, use_cfg: bool) -> torch.Tensor:
    """Rows are [cond; uncond]: ``uncond + (cond - uncond) * scale``, or cond alone after the interval."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale if use_cfg else cond


@torch.no_grad()
def official_generate(
    model: LlamaGen,
    labels: torch.Tensor,
    max_new_tokens: int,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Token ids (B, max_new_tokens): 1 prefill step + ``max_new_tokens - 1`` decode steps.

    CFG (scale > 1) doubles the rows; prefill always guides, decode step i (0-based) stops guiding once
    ``cfg_interval > -1 and i > cfg_interval``. The last sampled token is never fed back.
    """
    cfg = cfg_scale > 1.0
    rows = torch.cat([labels, torch.full_like(labels, model.null_class)]) if cfg else labels
    caches = model.new_caches(len(rows), max_len=model.cls_token_num + max_new_tokens)
    logits = model.prefill(rows, caches)
    if cfg:
        logits = guide(logits, cfg_scale, True)
    token = sample_next(logits, temperature, top_k, top_p)
    tokens = [token]
    use_cfg = True
    for i in range(max_new_tokens - 1):
        if cfg_interval > -1 and i > cfg_interval:
            use_cfg = False
        logits = model.step(torch.cat([token, token]) if cfg else token, model.cls_token_num + i, caches)
        if cfg:
            logits = guide(logits, cfg_scale, use_cfg)
        token = sample_next(logits, temperature, top_k, top_p)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


# ---- tests ---------------------------------------------------------------------------------------------
def test_state_dict_keys_and_shapes_are_official(fixture: dict, model: LlamaGen) -> None:
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}
    assert model.null_class == fixture["config"]["num_classes"]


@torch.no_grad()
def test_full_forward_logits(fixture: dict, model: LlamaGen, device: torch.device) -> None:
    f = to_device(fixture["forward"], device)
    logits = model(f["idx"], f["labels"])
    assert logits.dtype == torch.float32 and logits.shape == f["logits"].shape
    assert rel_err(logits, f["logits"]) < LOGITS_REL_TOL


@torch.no_grad()
def test_kv_cache_prefill_and_steps_match_full_forward(
    fixture: dict, model: LlamaGen, device: torch.device
) -> None:
    f = to_device(fixture["forward"], device)
    caches = model.new_caches(len(f["labels"]))
    logits = [model.prefill(f["labels"], caches)]
    for n in range(f["idx"].shape[1]):
        logits.append(model.step(f["idx"][:, n : n + 1], model.cls_token_num + n, caches))
    assert rel_err(torch.cat(logits, dim=1), f["logits"]) < LOGITS_REL_TOL


@pytest.mark.parametrize("run", GENERATE_RUNS)
def test_official_generate_reproduces_token_ids(
    fixture: dict, model: LlamaGen, run: str, device: torch.device, cpu_draws
) -> None:
    f = fixture["generate"]
    spec = f["runs"][run]
    torch.manual_seed(f["seed"])
    out = official_generate(model, f["labels"].to(device), f["max_new_tokens"], **spec["kwargs"])
    assert torch.equal(out.cpu(), spec["out"].long())


@torch.no_grad()
def test_vq_loads_strictly_and_decodes_codes(fixture: dict, device: torch.device) -> None:
    f = fixture["vq"]
    vq = VQModel(VQArch(**f["config"])).eval()
    load_strict(vq, f["state_dict"], source=f"{FIXTURE}[vq]")
    vq, f = vq.to(device), {**f, "codes": f["codes"].to(device)}
    images = vq.decode_code(f["codes"], tuple(f["shape"]))
    assert images.shape == f["decode_out"].shape
    assert rel_err(images, f["decode_out"]) < VQ_REL_TOL
    assert rel_err(vq.decode_code(f["codes"]), f["decode_out"]) < VQ_REL_TOL  # square grid by default


@pytest.mark.parametrize("run", GENERATE_RUNS)
def test_ar_sampler_with_official_rng_reproduces_generate(
    fixture: dict, model: LlamaGen, run: str, device: torch.device, cpu_draws
) -> None:
    """sampler=ar, rng=official: the official generate() token for token (with the full KV cache)."""
    from lazygen.samplers.ar import ARSampler, ARSamplerConf

    f = fixture["generate"]
    spec = f["runs"][run]
    kw = dict(spec["kwargs"])
    conf = ARSamplerConf(num_iter=f["max_new_tokens"], cfg=kw.pop("cfg_scale", 1.0), rng="official", **kw)
    torch.manual_seed(f["seed"])
    out = ARSampler(conf).sample(model, f["labels"].to(device))
    assert torch.equal(out.cpu(), spec["out"].long())
