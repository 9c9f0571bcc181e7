"""Parallel decoding for LlamaGen (sampler=sjd, sampler=zipar) on the shipped tiny_llamagen: exactness
against next-token decoding, the forward-pass counts, per-seed independence, KV rollback and holes, and
composition with ADSA's bounded cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lazygen.build import build_model
from lazygen.cache.adsa import ADSAConf, ADSAPolicy
from lazygen.cache.base import NoCache
from lazygen.config import LlamaGenModelConf
from lazygen.models.llamagen import DenseKV
from lazygen.samplers.ar import ARSampler, ARSamplerConf
from lazygen.samplers.sjd import SJDSampler, SJDSamplerConf
from lazygen.samplers.zipar import ZipARSampler, ZipARSamplerConf, zipar_passes

TOKENS = 256  # tiny_llamagen: 16 x 16
CFG = 2.0


@pytest.fixture(scope="module")
def model():
    from hydra import compose, initialize_config_dir

    from lazygen.config import validate
    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        run = validate(compose("config", overrides=["model=tiny_llamagen"]))
    assert isinstance(run.model, LlamaGenModelConf)
    return build_model(run.model)


LABELS = torch.tensor([0, 3, 7, 9])
SEEDS = [11, 12, 13, 14]


def settings(**kw) -> dict:
    return {"num_iter": TOKENS, "cfg": CFG, "top_p": 0.6, **kw}


def run(sampler, model, policy=None, labels=LABELS, seeds=SEEDS):
    policy = policy or NoCache()
    return sampler.sample(model, labels, seeds, policy), policy


# ---- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra", [{}, {"acceptance": "batch_min"}, {"draft_init": "left"}, {"residual": "refiltered"}]
)
def test_sjd_greedy_equals_ar(model, extra):
    """top_k=1: every acceptance test and residual is deterministic, so SJD must give ar's tokens."""
    ar, _ = run(ARSampler(ARSamplerConf(**settings(top_k=1))), model)
    sjd, policy = run(SJDSampler(SJDSamplerConf(**settings(top_k=1), **extra)), model)
    assert torch.equal(sjd, ar)
    assert policy.stats.model_calls < TOKENS  # and in fewer passes than one per token


@pytest.mark.parametrize("window", [16, 40])
@pytest.mark.parametrize("attend_unwritten", [False, True])
def test_zipar_raster_window_equals_ar(model, window, attend_unwritten):
    """A window of the whole grid width or more is raster next-token decoding: ar's tokens when sampling."""
    ar, _ = run(ARSampler(ARSamplerConf(**settings())), model)
    zipar, policy = run(
        ZipARSampler(ZipARSamplerConf(**settings(window=window, attend_unwritten=attend_unwritten))), model
    )
    assert torch.equal(zipar, ar)
    assert policy.stats.model_calls == TOKENS


@pytest.mark.parametrize("window", [1, 2, 4, 8, 12])
def test_zipar_forward_passes(model, window):
    """2G + (G - 2) w passes (the official control flow's count, reference/zipar.md §2): 144 at w = 8."""
    tokens, policy = run(
        ZipARSampler(ZipARSamplerConf(**settings(window=window))), model, labels=LABELS[:2], seeds=SEEDS[:2]
    )
    assert policy.stats.model_calls == zipar_passes(16, window) == 2 * 16 + 14 * window
    assert tokens.shape == (2, TOKENS) and int(tokens.max()) < 16


def test_zipar_unwritten_slots_matter(model):
    """The official attention to not-yet-generated (zero) slots changes the images; the masked default differs."""
    masked, _ = run(ZipARSampler(ZipARSamplerConf(**settings(window=4))), model)
    official, _ = run(ZipARSampler(ZipARSamplerConf(**settings(window=4, attend_unwritten=True))), model)
    assert not torch.equal(masked, official)


# ---- per-seed independence --------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: SJDSampler(SJDSamplerConf(**settings())),
    lambda: ZipARSampler(ZipARSamplerConf(**settings())),
])  # fmt: skip
def test_an_image_depends_only_on_its_seed(model, make):
    """rng=per_sample: the batch's images equal the same seeds generated one at a time (SJD: though the
    images of a batch accept different numbers of drafts per pass)."""
    together, _ = run(make(), model)
    alone = torch.cat(
        [run(make(), model, labels=LABELS[i : i + 1], seeds=SEEDS[i : i + 1])[0] for i in range(len(SEEDS))]
    )
    assert torch.equal(together, alone)


def test_sjd_accepts_drafts_and_reports_them(model):
    tokens, policy = run(SJDSampler(SJDSamplerConf(**settings())), model)
    counters = policy.stats.sampler
    metrics, detail = SJDSampler.report(counters)
    assert 0 < metrics["sampler/accept_rate"] < 1
    assert metrics["sampler/iterations_per_img"] < TOKENS  # more than one token per pass on average
    assert len(detail["accept_rate_by_draft_slot"]) == 15
    tested, kept = detail["drafts_tested_by_slot"], detail["drafts_accepted_by_slot"]
    assert all(a <= v for a, v in zip(kept, tested, strict=True)) and tested[0] >= tested[-1]


def test_sjd_batch_min_keeps_every_image_in_step(model):
    """acceptance=batch_min (the official rule): one shared prefix, so the batch needs at least as many
    passes as its images alone would."""
    _, per_image = run(SJDSampler(SJDSamplerConf(**settings())), model)
    _, batch_min = run(SJDSampler(SJDSamplerConf(**settings(acceptance="batch_min"))), model)
    assert batch_min.stats.sampler["sjd_iterations"][0] == batch_min.stats.model_calls * len(SEEDS) - len(
        SEEDS
    )
    assert SJDSampler.report(batch_min.stats.sampler)[0]["sampler/accept_rate"] > 0


# ---- caches ---------------------------------------------------------------------------------------------------
def test_dense_kv_masks_unwritten_and_rolled_back_slots():
    cache = DenseKV(1, 1, 8, 4, torch.float32, torch.device("cpu"))
    k = torch.ones(1, 1, 2, 4)
    cache.update(k, k, torch.tensor([0, 1]))
    _, _, mask = cache.update(k[:, :, :1], k[:, :, :1], torch.tensor([4]))  # slots 2 and 3 never written
    assert mask is not None and mask[0, 0, 0].tolist() == [True, True, False, False, True]
    cache.attend_unwritten = True  # the official static cache: zero slots stay visible
    _, _, mask = cache.update(k[:, :, :1], k[:, :, :1], torch.tensor([5]))
    assert mask is None or bool(mask.all())
    cache.attend_unwritten = False
    cache.truncate(2)  # drop 4 and 5
    keys, _, mask = cache.update(k[:, :, :1], k[:, :, :1], torch.tensor([2]))
    assert keys.shape[2] == 3 and mask is None  # contiguous again: the fast path


def test_bounded_kv_rollback_and_out_of_order_writes(model):
    """ADSA's dynamic cache under parallel decoding: full budget = the plain cache's tokens (greedy), and a
    smaller budget stays bounded and still decodes."""
    ar, _ = run(ARSampler(ARSamplerConf(**settings(top_k=1))), model)
    for sampler in (
        SJDSampler(SJDSamplerConf(**settings(top_k=1))),
        ZipARSampler(ZipARSamplerConf(**settings(top_k=1, window=4))),
    ):
        full, _ = run(sampler, model, ADSAPolicy(ADSAConf(budget=TOKENS)))
        plain, _ = run(sampler, model)
        assert torch.equal(full, plain)
        full_policy, bounded_policy = ADSAPolicy(ADSAConf(budget=TOKENS)), ADSAPolicy(ADSAConf(budget=96))
        run(sampler, model, full_policy)
        bounded, _ = run(sampler, model, bounded_policy)
        assert bounded.shape == ar.shape and not torch.equal(bounded, plain)
        assert bounded_policy.stats.kv_cache_bytes_per_img < 0.5 * full_policy.stats.kv_cache_bytes_per_img
        assert 0 < bounded_policy.stats.attended_tokens < bounded_policy.stats.context_tokens
        for cache in bounded_policy.caches:
            assert cache.k.shape[2] == 1 + 96  # the class token + the budget: never grows
            assert int((cache.pos >= 0).sum(-1).max()) <= 97


def test_zipar_raster_with_adsa_equals_ar_with_adsa(model):
    ar, _ = run(ARSampler(ARSamplerConf(**settings())), model, ADSAPolicy(ADSAConf(budget=128)))
    zipar, _ = run(
        ZipARSampler(ZipARSamplerConf(**settings(window=16))), model, ADSAPolicy(ADSAConf(budget=128))
    )
    assert torch.equal(zipar, ar)


def test_baselines_are_next_token_decoding():
    sjd = SJDSamplerConf(**settings(window=8, temperature=0.9))
    base = sjd.baseline(TOKENS)
    assert base == ARSamplerConf(**settings(temperature=0.9))
    assert ZipARSamplerConf(**settings()).baseline(TOKENS) == replace(base, temperature=1.0)


# ---- distribution -----------------------------------------------------------------------------------------
DIST_IMAGES = 150  # per arm (about two minutes for the three samples on 2 cores: make test-full)
PERMUTATIONS = 500


def marginal_statistic(x: torch.Tensor, y: torch.Tensor, levels: int) -> float:
    """Sum over positions of the chi-square statistic of the two samples' token counts at that position."""
    cx = torch.nn.functional.one_hot(x, levels).sum(0).double()  # (positions, levels)
    cy = torch.nn.functional.one_hot(y, levels).sum(0).double()
    total = cx + cy
    seen = total > 0
    ex, ey = total * len(x) / (len(x) + len(y)), total * len(y) / (len(x) + len(y))
    return float(((cx - ex) ** 2 / ex)[seen].sum() + ((cy - ey) ** 2 / ey)[seen].sum())


def marginals_p_value(x: torch.Tensor, y: torch.Tensor, levels: int = 16) -> float:
    """Two-sample permutation test of equal per-position marginals. Images (not tokens) are permuted between
    the samples, so the dependence between the positions of one image is respected."""
    observed = marginal_statistic(x, y, levels)
    pool, generator = torch.cat([x, y]), torch.Generator().manual_seed(0)
    at_least = 0
    for _ in range(PERMUTATIONS):
        order = torch.randperm(len(pool), generator=generator)
        at_least += marginal_statistic(pool[order[: len(x)]], pool[order[len(x) :]], levels) >= observed
    return (at_least + 1) / (PERMUTATIONS + 1)


class WrongTestSJD(SJDSampler):
    """A deliberately broken acceptance rule: the ratio upside down, min(1, q(d) / p(d))."""

    @staticmethod
    def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
        return (q_draft / p_draft.clamp(min=torch.finfo(p_draft.dtype).tiny)).clamp(max=1)


@pytest.mark.slow
def test_sjd_keeps_ar_token_marginals(model):
    """Temperature 1, full support (top_p 1): SJD's per-position marginals match ar's (independent seeds),
    and the same test rejects the broken acceptance rule."""
    conf = settings(top_p=1.0)
    labels = torch.arange(DIST_IMAGES) % 10

    def sample(sampler, first_seed: int) -> torch.Tensor:
        seeds = list(range(first_seed, first_seed + DIST_IMAGES))
        return torch.cat([sampler.sample(model, labels[i : i + 50], seeds[i : i + 50], NoCache())
                          for i in range(0, DIST_IMAGES, 50)])  # fmt: skip

    ar = sample(ARSampler(ARSamplerConf(**conf)), 0)
    assert marginals_p_value(ar, sample(SJDSampler(SJDSamplerConf(**conf)), 10_000)) > 0.01
    assert marginals_p_value(ar, sample(WrongTestSJD(SJDSamplerConf(**conf)), 20_000)) < 0.01


# ---- every LlamaGen -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llamagen_b", "llamagen_l", "llamagen_xl", "llamagen_xxl", "llamagen_3b"])
def test_every_llamagen_composes_with_parallel_decoding_and_adsa(name):
    from hydra import compose, initialize_config_dir

    from lazygen.config import validate
    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        for method in ("sjd", "zipar", "sjd_adsa", "zipar_adsa"):
            run_conf = validate(compose("config", overrides=[f"model={name}", f"method={method}"]))
            assert run_conf.sampler.num_iter == 576 and run_conf.sampler.baseline(576).name == "ar"


def test_zipar_on_a_24x24_grid_takes_224_passes():
    """LlamaGen at 384 px, window 8: 224 passes instead of 576 (the paper's LlamaGen count)."""
    from lazygen.bench_parallel import static_calls

    assert static_calls("llamagen_b", "none", ("sampler=zipar",)) == 224
    assert static_calls("llamagen_b", "adsa", ("sampler=zipar",)) == 224
    assert static_calls("llamagen_b", "none", ()) == 576
