"""cache=lazymar: its schedule, its configuration, and what each mechanism changes and saves.

A tiny random MAR (32 wide, 3 + 3 layers) keeps these fast; the official-code parity lives in
tests/parity/test_lazymar_official.py.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from helpers import compose_cfg

from lazygen.cache.base import StepContext
from lazygen.cache.lazymar import OFFICIAL_RETAIN_SCHEDULE, STRATEGIES, LazyMARConf, LazyMARPolicy
from lazygen.config import validate
from lazygen.errors import ConfigError
from lazygen.metrics.perf import measure_flops
from lazygen.run import cache_metrics, make_generator
from lazygen.samplers.mar import mask_schedule

TINY = [
    "model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
    "model.arch.encoder_depth=3", "model.arch.decoder_depth=3", "model.arch.encoder_num_heads=4",
    "model.arch.decoder_num_heads=4", "model.arch.diffloss_d=3", "model.arch.diffloss_w=32",
    "sampler.num_iter=8", "sampler.diffusion_steps=6", "sampler.cfg=3.0",
]  # fmt: skip
# every mechanism active within 8 steps and 6 diffusion steps
LAZY = [
    "cache=lazymar", "cache.refresh_start=2", "cache.refresh_interval=3", "cache.selection_layer=1",
    "cache.retain_ratio=0.3", "cache.head_interval=4",
]  # fmt: skip
ALL_OFF = ["cache.token_cache=false", "cache.encoder_cache=false", "cache.condition_cache=false",
           "cache.head_cache=false"]  # fmt: skip
LABELS, SEEDS = torch.tensor([1, 7, 3]), [0, 1, 2]


def run_conf(*overrides: str):
    return validate(compose_cfg(*TINY, *overrides))


def only(mechanism: str) -> list[str]:
    return [*LAZY, *[o for o in ALL_OFF if not o.startswith(f"cache.{mechanism}=")]]


def sample(run) -> tuple[torch.Tensor, LazyMARPolicy]:
    gen = make_generator(run)
    return gen.sampler.sample(gen.model, LABELS, SEEDS, gen.policy), gen.policy


def flops_by_part(run) -> dict[str, float]:
    report = measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "meta")
    parts = {k.split(".")[-1]: v for k, v in report.by_module.items() if k.count(".") == 1}
    return {"total": report.tflops_per_img, **parts}


@pytest.fixture(scope="module")
def baseline() -> tuple[torch.Tensor, dict[str, float]]:
    run = run_conf()
    return sample(run)[0], flops_by_part(run)


# ---- configuration ------------------------------------------------------------------------------------
def test_yaml_defaults_are_the_official_constants() -> None:
    run = validate(compose_cfg("cache=lazymar"))
    assert isinstance(run.cache, LazyMARConf)
    for f in fields(LazyMARConf):
        assert getattr(run.cache, f.name) == getattr(LazyMARConf(), f.name), f.name
    c = run.cache
    assert (c.refresh_start, c.refresh_interval, c.selection_layer, c.keep_margin) == (5, 9, 3, 15)
    assert (c.head_interval, c.head_refresh_above, c.head_skip_blocks) == (7, 0.9, [1, 2, 3, 4])
    assert c.retain_schedule == OFFICIAL_RETAIN_SCHEDULE and len(c.retain_schedule) == 64
    assert [int(320 * r) for r in sorted(set(c.retain_schedule), reverse=True)] == [
        320,
        192,
        160,
        128,
        48,
        38,
        16,
    ]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["sampler.cfg=1.0", "cache.condition_cache=true"],
            "cache.condition_cache=true needs classifier-free",
        ),
        (["sampler.cfg=1.0", "cache.head_cfg_residual=true"], "cache.head_cfg_residual=true needs"),
        (["cache.selection_layer=3"], "not a decoder block of this model (it has 3"),
        (["cache.retain_ratio=0.0"], "retain ratios must lie in (0, 1]"),
        (["cache.retain_schedule=[]"], "retain ratios must lie in (0, 1]"),
        (["cache.strategy=greedy"], "cache.strategy='greedy'"),
        (["cache.criterion=keys"], "cache.criterion='keys'"),
        (["cache.refresh_interval=0"], "cache.refresh_interval=0 must be >= 1"),
        (["cache.head_refresh_above=2"], "cache.head_refresh_above=2.0 must be in [0, 1]"),
        (["cache.condition_cache=maybe"], "cache.condition_cache='maybe' must be true, false or auto"),
    ],
)
def test_bad_settings_are_clear_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        run_conf("cache=lazymar", "cache.selection_layer=1", *overrides)
    assert needle in str(err.value)


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cache.refresh_every"):
        run_conf(*LAZY, "+cache.refresh_every=3")


def test_selection_layer_may_be_anything_when_the_token_cache_is_off() -> None:
    run_conf("cache=lazymar", "cache.selection_layer=7", "cache.token_cache=false")


# ---- schedule -----------------------------------------------------------------------------------------
def ctx(step: int, num_steps: int = 64, refresh: bool = False) -> StepContext:
    return StepContext(step, num_steps, None, torch.zeros(1, 0, dtype=torch.long), True, refresh)


@pytest.mark.parametrize(
    ("num_steps", "full"),
    [(64, [0, 1, 2, 3, 4, 5, 14, 23, 32, 41, 50, 59]), (32, [0, 1, 2, 3, 4, 5, 14, 23])],
)
def test_refresh_schedule_is_the_official_one(num_steps: int, full: list[int]) -> None:
    policy = LazyMARPolicy(LazyMARConf())
    assert [s for s in range(num_steps) if policy.is_full(ctx(s, num_steps))] == full
    assert policy.is_full(ctx(7, refresh=True))  # a sampler may ask for a refresh (e.g. a stage start)


def test_kept_token_counts_follow_the_official_formula() -> None:
    """reference §5.6: the counts the official code keeps at 64 steps on the 256 + 64 geometry."""
    policy = LazyMARPolicy(LazyMARConf())
    remaining, prev, kept = 256, 0, {}
    for step, mask_len in enumerate(mask_schedule(256, 64)):
        now = remaining - mask_len
        c = StepContext(
            step, 64, torch.zeros(1, prev, dtype=torch.long), torch.zeros(1, now, dtype=torch.long), True
        )
        kept[step] = policy.num_kept(c, 320)
        remaining, prev = mask_len, now
    assert [kept[s] for s in (6, 13, 19, 20, 21, 22, 24, 25, 29, 30, 31, 35, 39, 40)] == (
        [320, 320, 320, 192, 160, 160, 160, 128, 128, 48, 48, 38, 38, 26]
    )
    assert all(25 <= kept[s] <= 28 for s in range(42, 64) if s not in (50, 59))


def test_schedules_extend_past_their_table() -> None:
    step_indexed = LazyMARPolicy(LazyMARConf(retain_schedule=[1.0, 0.5, 0.2]))
    assert [step_indexed.retain_ratio(s, 100) for s in (0, 1, 2, 99)] == [1.0, 0.5, 0.2, 0.2]
    progress = LazyMARPolicy(LazyMARConf(retain_schedule=[1.0, 0.5, 0.2], schedule_indexing="progress"))
    assert [progress.retain_ratio(s, 30) for s in (0, 9, 10, 20, 29)] == [1.0, 1.0, 0.5, 0.2, 0.2]
    assert LazyMARPolicy(LazyMARConf(retain_ratio=0.25)).retain_ratio(40, 64) == 0.25


# ---- token selection ----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_keeps_the_forced_tokens(strategy: str) -> None:
    torch.manual_seed(0)
    policy = LazyMARPolicy(LazyMARConf(strategy=strategy, retain_ratio=0.1))
    rows, buffer, length = 2, 4, 16
    policy.predicted_mask = torch.zeros(rows, length, dtype=torch.bool)
    policy.predicted_mask[:, :6] = True
    now, prev = torch.tensor([[7, 9], [8, 12]]), torch.tensor([[4, 5], [0, 3]])
    c = StepContext(10, 20, prev, now, False)
    signal, signal_prev = torch.randn(rows, 2, buffer + length, 4), torch.randn(rows, 2, buffer + length, 4)
    kept = policy._select(signal, signal_prev, c, rows, buffer + length, buffer, "cpu")
    assert kept.shape == (rows, min(buffer + length, 4 + policy.conf.keep_margin))
    assert torch.equal(kept, kept.sort(dim=1).values)
    for r in range(rows):
        assert set((now[r] + buffer).tolist()) | set((prev[r] + buffer).tolist()) <= set(kept[r].tolist())


def test_similarity_strategies_pick_opposite_ends() -> None:
    rows, positions = 1, 12
    now = torch.randn(rows, 2, positions, 8)
    prev = now.clone()
    prev[:, :, :3] = -now[:, :, :3]  # positions 0..2 changed completely, the rest not at all
    c = StepContext(30, 64, None, torch.zeros(1, 0, dtype=torch.long), False)
    pick = {}
    for strategy in ("max_similarity", "min_similarity"):
        policy = LazyMARPolicy(LazyMARConf(strategy=strategy, retain_ratio=0.25, keep_margin=0))
        policy.predicted_mask = torch.zeros(rows, positions, dtype=torch.bool)
        pick[strategy] = policy._select(now, prev, c, rows, positions, 0, "cpu")[0].tolist()
    assert pick["max_similarity"] == [0, 1, 2]  # the changed tokens are recomputed, the stable reused
    assert not set(pick["min_similarity"]) & {0, 1, 2}


# ---- what each mechanism changes and saves ------------------------------------------------------------
def test_everything_off_is_the_baseline_exactly(baseline) -> None:
    out, policy = sample(run_conf(*LAZY, *ALL_OFF))
    assert torch.equal(out, baseline[0])
    assert flops_by_part(run_conf(*LAZY, *ALL_OFF)) == baseline[1]


def test_refreshing_every_step_is_the_baseline_transformer(baseline) -> None:
    out, policy = sample(
        run_conf(*LAZY, "cache.refresh_interval=1", "cache.refresh_start=0", "cache.head_cache=false")
    )
    assert torch.allclose(out, baseline[0], rtol=1e-4, atol=1e-4 * float(baseline[0].abs().max()))
    assert policy.stats.reused_steps == 0 and policy.stats.full_steps == 8


@pytest.mark.parametrize(
    ("mechanism", "cheaper", "unchanged"),
    [
        ("token_cache", {"decoder_blocks"}, {"encoder_blocks", "diffloss"}),
        ("encoder_cache", {"encoder_blocks"}, {"decoder_blocks", "diffloss"}),
        ("condition_cache", {"encoder_blocks", "decoder_blocks"}, {"diffloss"}),
        ("head_cache", {"diffloss"}, {"encoder_blocks", "decoder_blocks"}),
    ],
)
def test_each_mechanism_alone_changes_the_result_and_saves_its_flops(baseline, mechanism, cheaper, unchanged):
    base_out, base_flops = baseline
    run = run_conf(*only(mechanism))
    out, policy = sample(run)
    assert torch.isfinite(out).all()
    assert (out - base_out).abs().max() > 1e-3 * base_out.abs().max()
    flops = flops_by_part(run)
    for part in cheaper:
        assert flops[part] < 0.95 * base_flops[part], part
    for part in unchanged:
        assert flops[part] == base_flops[part], part
    assert flops["total"] < base_flops["total"]


def test_condition_cache_halves_the_transformer_on_lazy_steps(baseline) -> None:
    """With only the condition cache, a lazy step runs the conditional half: exactly half the work."""
    run = run_conf(*only("condition_cache"))
    _, policy = sample(run)
    by_step = policy.stats.by_step
    lazy = [s for s in range(8) if not policy.is_full(ctx(s, 8))]
    assert lazy == [3, 4, 6, 7]
    assert all(by_step[s][0] * 2 == by_step[s][1] for s in lazy)
    assert all(by_step[s][0] == by_step[s][1] for s in range(8) if s not in lazy)


def test_all_mechanisms_together_meta_count_equals_real_count() -> None:
    run = run_conf(*LAZY)
    meta = measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "meta")
    real = measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "real")
    assert meta.device == "meta" and real.device == "cpu"
    assert meta.tflops_per_img == real.tflops_per_img > 0
    assert meta.by_module == real.by_module


def test_without_cfg_the_other_caches_still_work(baseline) -> None:
    out_base, _ = sample(run_conf("sampler.cfg=1.0"))
    out, policy = sample(run_conf(*LAZY, "sampler.cfg=1.0"))
    assert torch.isfinite(out).all() and not torch.equal(out, out_base)
    assert policy.lazy_rows == len(LABELS)  # no condition cache: lazy steps run every row
    assert policy.stats.reused_steps == 4


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_and_criterion_runs(strategy: str) -> None:
    out, policy = sample(run_conf(*LAZY, f"cache.strategy={strategy}", "cache.criterion=hidden"))
    assert torch.isfinite(out).all() and policy.stats.reused_steps == 4


def test_more_steps_than_the_schedule_table() -> None:
    out, policy = sample(run_conf(*LAZY, "sampler.num_iter=70", "cache.retain_ratio=null"))
    assert torch.isfinite(out).all()
    assert policy.stats.full_steps + policy.stats.reused_steps == 70


def test_cache_statistics_reach_the_metrics() -> None:
    _, policy = sample(run_conf(*LAZY))
    record = {"cache": policy.stats.counters()}
    metrics, detail = cache_metrics([record, record])
    assert metrics["cache/full_steps"] == 4 and metrics["cache/reused_steps"] == 4
    assert 0 < metrics["cache/recompute_frac"] < 1
    assert 0 < metrics["cache/head_full_frac"] < 1
    # the condition cache halves every lazy layer; after the selection layer fewer positions run as well
    assert metrics["cache/recompute_frac/decoder.0"] == (4 + 4 * 0.5) / 8
    assert metrics["cache/recompute_frac/decoder.2"] < metrics["cache/recompute_frac/decoder.0"]
    assert len(detail["recompute_frac_by_step"]) == 8 and detail["recompute_frac_by_step"][0] == 1.0
    assert detail["recompute_frac_by_step"][3] < 0.5  # lazy: half the rows, fewer tokens


def test_head_cache_flops_are_exactly_what_the_refresh_rule_leaves() -> None:
    """Tiny config: T = 6 diffusion steps, head_interval 4 -> k = 5, 4, 0 full (both CFG halves), k = 3, 2, 1
    conditional-only with blocks 1 and 2 skipped and the MLP branches reused (no k > 0.9 T refresh).

    Per chain, cond_embed runs once per row of z and time_embed once per step (shared by every row of the
    batch); per step the input projection runs once per token (the CFG halves share it)."""
    width, cond, channels, depth, skipped = 32, 32, 4, 3, 2  # tiny_mar: 4-channel KL latent tokens
    steps, chains, images, tokens = 6, 8, len(LABELS), 256
    linear = lambda i, o: 2 * i * o  # noqa: E731
    time_embed, cond_embed, proj = (
        linear(256, width) + linear(width, width),
        linear(cond, width),
        linear(channels, width),
    )
    ada, mlp = linear(width, 3 * width), 2 * linear(width, width)
    final = linear(width, 2 * width) + linear(width, 2 * channels)
    full_row, partial_row = depth * (ada + mlp) + final, (depth - skipped) * ada + final
    once = 2 * tokens * cond_embed + tokens * steps * proj + chains * steps * time_embed // images
    base = round(flops_by_part(run_conf())["diffloss"] * 1e12)
    cached = round(flops_by_part(run_conf(*only("head_cache")))["diffloss"] * 1e12)
    assert base == once + 2 * tokens * steps * full_row
    assert cached == once + 2 * tokens * 3 * full_row + tokens * 3 * partial_row
