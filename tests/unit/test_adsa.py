"""cache=adsa: the O(M d) ranking, the dynamic cache's bounds, and exact equality at full budget."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import compose_cfg

from lazygen.build import build_policy
from lazygen.cache.adsa import ADSAConf, ADSAPolicy, BoundedKV, RunningRanking, diversity_scores
from lazygen.cache.base import NoCache
from lazygen.config import validate
from lazygen.errors import ConfigError, ConfigWarning
from lazygen.models.llamagen import LlamaGen, LlamaGenArch
from lazygen.samplers.ar import ARSampler, ARSamplerConf

ARCH = LlamaGenArch(dim=32, n_layer=2, n_head=4, multiple_of=32, vocab_size=16, num_classes=10, block_size=64)
LABELS, SEEDS = torch.tensor([1, 7, 3]), [0, 1, 2]


@pytest.fixture(scope="module")
def model() -> LlamaGen:
    torch.manual_seed(0)
    return LlamaGen(ARCH).eval()


def generate(model, policy, cfg: float = 2.0) -> torch.Tensor:
    return ARSampler(ARSamplerConf(num_iter=64, cfg=cfg)).sample(model, LABELS, SEEDS, policy)


def test_mean_vector_ranking_equals_the_pairwise_mean_cosine() -> None:
    torch.manual_seed(0)
    values = torch.randn(2, 3, 40, 8)
    candidates = torch.rand(2, 3, 40) > 0.3
    scores = diversity_scores(values, candidates, candidates)
    unit = torch.nn.functional.normalize(values, dim=-1)
    pairwise = unit @ unit.transpose(-1, -2)  # (2, 3, 40, 40)
    mean = (pairwise * candidates[..., None, :]).sum(-1) / candidates.sum(-1, keepdim=True)
    assert torch.allclose(scores[candidates], mean[candidates], atol=1e-5)
    assert torch.isinf(scores[~candidates]).all()


@pytest.mark.parametrize("mode", ["dynamic", "sparse"])
def test_full_budget_equals_the_baseline_exactly(model, mode: str) -> None:
    baseline = generate(model, NoCache())
    policy = ADSAPolicy(ADSAConf(budget=100, mode=mode))  # above the 64 tokens: capped, never evicts
    assert torch.equal(generate(model, policy), baseline)
    assert policy.stats.attended_tokens == policy.stats.context_tokens
    if mode == "dynamic":
        assert all(c.k.shape[2] == 1 + 64 for c in policy.caches)
        assert all(c.running is None for c in policy.caches)  # nothing to evict: no ranking state held


@pytest.mark.parametrize("rank_every", [1, 5])
@pytest.mark.parametrize("mode", ["dynamic", "sparse"])
def test_a_smaller_budget_changes_the_images_and_attends_to_the_budget(
    model, mode: str, rank_every: int
) -> None:
    policy = ADSAPolicy(ADSAConf(budget=32, mode=mode, rank_every=rank_every))
    out = generate(model, policy)
    assert not torch.equal(out, generate(model, NoCache()))
    # per layer and row, step t attends to min(t + 1, 32) of t + 1 image tokens (both CFG halves)
    expected = sum(min(n, 32) for n in range(1, 64)) * 6 * ARCH.n_layer
    assert policy.stats.attended_tokens == expected
    assert policy.stats.context_tokens == sum(range(1, 64)) * 6 * ARCH.n_layer


@pytest.mark.parametrize(
    ("granularity", "rank_every"), [("head", 1), ("layer", 1), ("head", 6), ("layer", 40)]
)
def test_dynamic_cache_stays_bounded_and_keeps_prefix_and_local(
    model, granularity: str, rank_every: int
) -> None:
    conf = ADSAConf(budget=32, granularity=granularity, rank_every=rank_every)
    policy = ADSAPolicy(conf)
    generate(model, policy)
    prefix, local = conf.regions(64, 8)
    assert (prefix, local) == (4, 16)
    for cache in policy.caches:
        assert cache.k.shape[2] == cache.v.shape[2] == 1 + 32 and cache.filled == 33  # never grows
        held = cache.pos  # (rows, heads, slots) absolute positions
        assert (held[..., 0] == 0).all()  # the class token is never evicted
        image = held[..., 1:] - 1
        for kept in [*range(prefix), *range(63 - local + 1, 63)]:  # token 63 is sampled, never fed
            assert (image == kept).any(dim=-1).all()
        assert (image.sort(dim=-1).values.diff(dim=-1) > 0).all()  # every position at most once
        if granularity == "layer":
            assert (held == held[:, :1]).all()  # one ranking per layer: the heads keep the same tokens
    # keys and values (fp32), plus per slot and head an fp32 inverse norm and an int16 position; the per-step
    # ranking (head, 1) adds an fp32 candidate mask per slot and a ring of the last `local` slots (int64)
    per_step = granularity == "head" and rank_every == 1
    ranking = [
        c.pos.numel() * 4 + c.pos[..., 0].numel() * local * 8 if per_step else 0 for c in policy.caches
    ]
    assert policy.stats.kv_cache_bytes == sum(
        c.k.numel() * 4 * 2 + c.pos.numel() * (4 + 2) + extra for c, extra in zip(policy.caches, ranking)
    )


@pytest.mark.parametrize("rank_every", [1, 5, 100])
def test_sparse_mode_ranks_on_its_cadence(model, rank_every: int, monkeypatch) -> None:
    """Budget 32 of 64 tokens: image tokens 33..63 are the selecting steps (31 per layer and generation)."""
    policy = ADSAPolicy(ADSAConf(budget=32, mode="sparse", rank_every=rank_every))
    calls = []
    rank = policy.choose_previous
    monkeypatch.setattr(
        policy, "choose_previous", lambda values, length: calls.append(length) or rank(values, length)
    )
    generate(model, policy)
    ranked = range(1 + 33, 1 + 64, rank_every)  # cache lengths (class token + image tokens) that rank
    assert calls == [length for length in ranked for _ in range(ARCH.n_layer)]  # each layer, each such step


@pytest.mark.parametrize("rank_every", [1, 3])
def test_eviction_takes_the_most_redundant_previous_tokens(rank_every: int) -> None:
    policy = ADSAPolicy(ADSAConf(budget=8, prefix=1, local=2, rank_every=rank_every))
    policy.n_cond, policy.prefix, policy.local, policy.seq_len = 1, 1, 2, 20
    cache = BoundedKV(policy, 1, 1, capacity=8, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))
    # class token, then image tokens 0..7 (positions 1..8) with distinct mean similarities
    values = torch.tensor([[0, 0], [5, 5], [1, 0], [0, 1], [1, 1], [1, -1], [-1, 1], [0.2, 1], [3, 3]])
    for position, value in enumerate(values):
        cache.update(value.view(1, 1, 1, 2), value.view(1, 1, 1, 2), torch.tensor([position]))
    assert cache.filled == 9  # full now; position 9 arrives next
    previous = [p for p in range(1, 9) if 1 <= p - 1 <= 8 - 2]  # image 1..6 (prefix 0, local 7 and 8)
    unit = torch.nn.functional.normalize(values[previous], dim=-1)
    redundancy = (unit @ unit.mean(0)).tolist()
    # one ranking serves rank_every evictions: the most redundant first, then the next ones
    expected = [p for _, p in sorted(zip(redundancy, previous), reverse=True)][:rank_every]
    new = [torch.full((1, 1, 1, 2), -float(position)) for position in range(9, 9 + rank_every)]
    for position, value in zip(range(9, 9 + rank_every), new):
        cache.update(value, value, torch.tensor([position]))
    held = cache.pos.flatten().tolist()
    assert not set(expected) & set(held) and set(range(9, 9 + rank_every)) <= set(held)


@pytest.mark.parametrize(("reference", "dtype"), [("previous", torch.float32), ("cache", torch.float32),
                                                   ("previous", torch.bfloat16)])  # fmt: skip
def test_the_running_ranking_evicts_what_a_ranking_from_scratch_picks(reference: str, dtype) -> None:
    """A bounded cache filled by a prefill and single tokens, then driven 70 steps past its capacity: before
    every eviction its running reference sum equals the sum from scratch, and it evicts the token that the
    general ranking (from scratch, every step) picks, in every row and head."""
    torch.manual_seed(0)
    policy = ADSAPolicy(ADSAConf(budget=20, prefix=2, local=4, reference=reference))
    policy.n_cond, policy.prefix, policy.local, policy.seq_len = 1, 2, 4, 90
    cache = BoundedKV(policy, 3, 2, capacity=20, head_dim=8, dtype=dtype, device=torch.device("cpu"))
    assert cache.running is not None
    values = torch.randn(3, 2, 90, 8).to(dtype)
    cache.update(values[:, :, :6], values[:, :, :6], torch.arange(6))  # condition + a prefill of 5
    evictions = 0
    for position in range(6, 90):
        value = values[:, :, position : position + 1]
        if cache.filled < cache.k.shape[2]:
            cache.update(value, value, torch.tensor([position]))
            continue
        pos, dense = cache.pos.long(), cache.v.float()
        general = policy.eviction_scores(cache.v, pos, position, cache.inv_norm).argmax(-1, keepdim=True)
        expected = pos.gather(2, general)
        _, reference_set = policy._regions(pos, position)
        scratch = (reference_set.float() * cache.inv_norm).unsqueeze(-2) @ dense  # (R, H, 1, d)
        leaving = (
            dense.gather(2, general[..., None].expand(-1, -1, -1, 8))
            * cache.inv_norm.gather(2, general)[..., None]
        )
        cache.update(value, value, torch.tensor([position]))
        assert not (cache.pos == expected).any() and (cache.pos == position).any(-1).all()  # it made room
        torch.testing.assert_close(cache.running.ref_sum, scratch - leaving, rtol=1e-5, atol=1e-5)
        evictions += 1
    assert evictions == 90 - 21


def test_every_running_eviction_of_a_generation_is_a_most_redundant_token(model, monkeypatch) -> None:
    """At every eviction of a whole generation (rank_every 1), the token the running ranking evicts scores,
    by a ranking from scratch of the same cache, within rounding of the most redundant one; and nearly
    always it is that one. (An exact near-tie may fall either way: layer-0 values of equal tokens are equal,
    and the running sum's last bits differ from a fresh sum's.)"""
    evict, checked, same = RunningRanking.evict, [], []

    def checked_evict(self, cache, new):
        scores = self.policy.eviction_scores(cache.v, cache.pos.long(), new, cache.inv_norm)
        slot = evict(self, cache, new)
        best = scores.max(dim=-1, keepdim=True).values
        checked.append(((best - scores.gather(2, slot)) <= 1e-5 * best.abs().clamp(min=1)).all())
        same.append((scores.argmax(dim=-1, keepdim=True) == slot).float().mean())
        return slot

    monkeypatch.setattr(RunningRanking, "evict", checked_evict)
    generate(model, ADSAPolicy(ADSAConf(budget=32)))
    assert len(checked) == ARCH.n_layer * (63 - 32) and all(checked)  # every step past the budget, per layer
    assert torch.stack(same).mean() > 0.99


def test_adsa_through_the_config() -> None:
    run = validate(compose_cfg("model=tiny_llamagen", "model.init=random", "cache=adsa", "cache.budget=96"))
    policy = build_policy(run.cache)
    assert isinstance(policy, ADSAPolicy) and policy.tag == "adsa96"
    assert run.cache.regions(256, 16) == (13, 32)


@pytest.mark.parametrize(
    ("model", "tokens"), [("tiny_llamagen", 171), ("llamagen_xl", 384), ("llamagen_b", 384)]
)
def test_the_default_budget_is_the_papers_share_of_every_model(model: str, tokens: int) -> None:
    """384 of 576 on the 384 px presets, 171 of tiny_llamagen's 256: the default evicts on every model."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # no capped-budget warning at the defaults
        run = validate(compose_cfg(f"model={model}", "model.init=random", "cache=adsa"))
    assert run.cache.relative and run.cache.tokens(run.model.arch.block_size) == tokens


def test_a_share_and_a_count_name_the_same_budget() -> None:
    share = validate(compose_cfg("model=tiny_llamagen", "cache=adsa", "cache.budget=0.5")).cache
    count = validate(compose_cfg("model=tiny_llamagen", "cache=adsa", "cache.budget=128")).cache
    assert (
        share.tokens(256) == count.tokens(256) == 128 and share.tag == "adsa0.50" and count.tag == "adsa128"
    )


@pytest.mark.parametrize("budget", ["256", "1.0", "1000"])
def test_a_budget_that_keeps_everything_is_a_warning_naming_the_key(budget: str) -> None:
    with pytest.warns(ConfigWarning, match=rf"cache.budget={budget.rstrip('0').rstrip('.')}.* keeps all 256"):
        validate(compose_cfg("model=tiny_llamagen", "cache=adsa", f"cache.budget={budget}"))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [(["model=tiny_llamagen", "cache=adsa", "cache.budget=40"], "must exceed cache.prefix"),
     (["model=tiny_llamagen", "cache=adsa", "cache.budget=0.1"], r"\(26 of the 256 image tokens"),
     (["model=tiny_llamagen", "cache=adsa", "cache.budget=100.5"], "a whole number"),
     (["model=tiny_llamagen", "cache=adsa", "cache.budget=-1"], "a share of the image tokens"),
     (["model=tiny_llamagen", "cache=adsa", "cache.mode=greedy"], "cache.mode"),
     (["model=tiny_llamagen", "cache=lazymar"], "cannot run model=tiny_llamagen"),
     (["model=tiny_mar", "cache=adsa"], "cannot run model=tiny_mar"),
     (["model=tiny_llamagen", "sampler=mar"], "cannot decode model=tiny_llamagen"),
     (["model=tiny_llamagen", "sampler.top_p=1.5"], "sampler.top_p")],
)  # fmt: skip
def test_bad_llamagen_settings_are_clear_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate(compose_cfg(*overrides))


def test_fixed_memory_benchmark_gives_each_variant_the_largest_batch_that_fits() -> None:
    """At a KV-memory budget between one full-cache image and two ADSA-128 images, the full cache gets
    one image and ADSA two: the bounded cache's throughput gain comes from the batch it lets fit."""
    from lazygen.bench_llamagen import MIB, fixed_memory_rows

    row = fixed_memory_rows("tiny_llamagen", [128], 8, memory_mib=2.1, repeats=1)
    for key in ("full", "adsa128-r8"):
        per_img, batch = row[f"{key}_kv_mib_per_img"] * MIB, row[f"{key}_batch"]
        assert batch * per_img <= 2.1 * MIB < (batch + 1) * per_img * 1.001, row
    assert (row["full_batch"], row["adsa128-r8_batch"]) == (1, 2), row
    assert row["adsa128-r8_img_per_s"] > 0 and "adsa128-r8_throughput_gain" in row


def test_fixed_memory_benchmark_refuses_a_budget_that_holds_no_image() -> None:
    from lazygen.bench_llamagen import fixed_memory_rows

    with pytest.raises(ConfigError, match="holds no image of full"):
        fixed_memory_rows("tiny_llamagen", [128], 1, memory_mib=0.5, repeats=1)
