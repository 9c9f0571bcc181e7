"""cache=recap: its plan, what cheap steps compute and save, and how it composes with every MAR sampler.

A tiny random MAR keeps these fast; the official-code parity lives in tests/parity/test_recap_official.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cfg

from lazygen.cache.recap import ReCAPConf, ReCAPPolicy
from lazygen.config import validate
from lazygen.errors import ConfigError
from lazygen.metrics.perf import measure_flops
from lazygen.run import make_generator

TINY = [
    "model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
    "model.arch.encoder_depth=2", "model.arch.decoder_depth=2", "model.arch.encoder_num_heads=4",
    "model.arch.decoder_num_heads=4", "model.arch.diffloss_d=2", "model.arch.diffloss_w=32",
    "sampler.num_iter=8", "sampler.diffusion_steps=6", "sampler.cfg=3.0",
]  # fmt: skip
LABELS, SEEDS = torch.tensor([1, 7, 3]), [0, 1, 2]
GTR = ["sampler=gtr", "sampler.stage_steps=[3,3,2]", "sampler.diffusion_steps=null", "sampler.t_max=6",
       "sampler.t_min=3", "sampler.t_rec=3", "sampler.t_detail=6"]  # fmt: skip
SAMPLERS = (["sampler=mar"], ["sampler=steps", "sampler.num_iter=6"], ["sampler=halton"],
            ["sampler=disa", "sampler.diffusion_steps=null", "sampler.upper=6", "sampler.lower=2"], GTR)  # fmt: skip


def run_conf(*overrides: str):
    return validate(compose_cfg(*TINY, *overrides))


def sample(run, labels=LABELS, seeds=SEEDS):
    gen = make_generator(run)
    return gen.sampler.sample(gen.model, labels, seeds, gen.policy), gen.policy


def tflops(run) -> float:
    return measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "meta").tflops_per_img


def random_plan(counts: list[int], batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    order = torch.stack([torch.randperm(sum(counts), generator=torch.Generator().manual_seed(seed + b))
                         for b in range(batch)])  # fmt: skip
    bounds = torch.tensor([0, *counts]).cumsum(0).tolist()
    return [order[:, a:b].sort(dim=1).values for a, b in zip(bounds, bounds[1:], strict=False)]


def test_plan_groups_after_the_plain_steps_and_splits_by_position() -> None:
    counts = [10, 8, 6, 5, 4, 3, 2, 2]
    plan = random_plan(counts)
    policy = ReCAPPolicy(ReCAPConf(num_cache_iters=2, pre_full_iters=3))
    out = policy.plan(plan, [False] * 8)
    assert [p.shape[1] for p in out] == counts  # every step keeps its count
    assert out[:3] == plan[:3]  # the plain steps are the sampler's
    assert policy.cheap == [False, False, False, False, True, True, False, True]  # groups 3-5, 6-7
    for start, members in ((3, (3, 4, 5)), (6, (6, 7))):
        group = torch.cat([plan[s] for s in members], 1).sort(1).values
        assert torch.equal(policy.group_at[start], group)  # the group's positions are the sampler's
        assert torch.equal(torch.cat([out[s] for s in members], 1), group)  # split in ascending order
    assert not torch.equal(out[4], plan[4])  # so the positions moved between the group's steps


def test_a_refresh_step_starts_its_own_group() -> None:
    plan = random_plan([6, 5, 4, 3, 2, 1])
    policy = ReCAPPolicy(ReCAPConf(num_cache_iters=2, pre_full_iters=0))
    policy.plan(plan, [False, False, True, False, False, True])
    assert policy.cheap == [False, True, False, True, True, False]


def test_all_plain_steps_are_the_baseline_exactly() -> None:
    base, _ = sample(run_conf())
    out, policy = sample(run_conf("cache=recap", "cache.pre_full_iters=8"))
    assert torch.equal(out, base) and policy.stats.reused_steps == 0


@pytest.mark.parametrize("buffer", [False, True])
def test_cheap_steps_change_the_result_and_save_flops(buffer: bool) -> None:
    run = run_conf("cache=recap", f"cache.cache_buffer={str(buffer).lower()}")
    base, _ = sample(run_conf())
    out, policy = sample(run)
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert (policy.stats.full_steps, policy.stats.reused_steps) == (6, 2)  # 4 plain, then (4, 5), (6, 7)
    assert tflops(run) < tflops(run_conf())
    # a cheap step recomputes the group (and the buffer unless it is cached), never all 320 decoder rows
    steps = policy.stats.by_layer_step["decoder.0"]
    assert all(steps[s][0] < steps[s][1] for s in (5, 7)) and steps[4][0] == steps[4][1]


def test_a_fast_chain_of_one_is_the_full_step_transformer_only() -> None:
    """fast_ratio 1: cheap steps change only the transformer's features, and those equal a full forward
    when K/V of a fresh forward would match: at the group's first step they are exactly the full step's."""
    out, policy = sample(run_conf("cache=recap", "cache.fast_ratio=1.0"))
    assert torch.isfinite(out).all() and policy.stats.reused_steps == 2


def test_meta_count_equals_real_count() -> None:
    run = run_conf("cache=recap")
    meta = measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "meta")
    real = measure_flops(lambda dev: make_generator(run, dev), LABELS, SEEDS, "real")
    assert meta.tflops_per_img == real.tflops_per_img > 0 and meta.by_module == real.by_module


@pytest.mark.parametrize("overrides", SAMPLERS, ids=lambda o: o[0])
def test_composes_with_every_mar_sampler_per_sample(overrides: list[str]) -> None:
    """With rng=per_sample an image depends on its seed alone: a batch equals its images run one by one, up
    to the float noise of batched matrix products (plain MAR differs by 1.7e-3 here; another seed by ~1)."""
    run = run_conf(*overrides, "cache=recap", "sampler.rng=per_sample")
    out, policy = sample(run)
    assert torch.isfinite(out).all() and policy.stats.reused_steps > 0
    alone = torch.cat([sample(run, LABELS[i : i + 1], SEEDS[i : i + 1])[0] for i in range(len(SEEDS))])
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-2)


def test_gtr_refresh_steps_stay_full() -> None:
    _, policy = sample(run_conf(*GTR, "cache=recap", "cache.pre_full_iters=0"))
    # stage starts (0, 3, 6) and every reconstruction step (6, 7) are refresh steps: a group ends before one
    assert [s for s, cheap in enumerate(policy.cheap) if cheap] == [1, 4]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [(["cache.num_cache_iters=0"], "num_cache_iters"), (["cache.fast_ratio=0"], "fast_ratio"),
     (["cache.pre_full_iters=-1"], "pre_full_iters")],
)  # fmt: skip
def test_bad_settings_are_clear_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_conf("cache=recap", *overrides)


def test_causal_models_are_refused() -> None:
    with pytest.raises(ConfigError, match="cache=recap cannot run model=tiny_llamagen"):
        validate(compose_cfg("model=tiny_llamagen", "cache=recap"))
