"""sampler=gtr: stages, step and diffusion schedules, and its composition with cache policies."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cfg

from lazygen.build import build_sampler
from lazygen.cache.base import MARPolicy
from lazygen.config import validate
from lazygen.errors import ConfigError
from lazygen.run import make_generator
from lazygen.samplers.gtr import frequency_scores, partition, split_counts, subsample_order
from lazygen.samplers.rng import PerSampleRandom

TINY = ["model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
        "model.arch.encoder_depth=2", "model.arch.decoder_depth=2", "model.arch.diffloss_d=2",
        "model.arch.diffloss_w=32", "sampler=gtr", "sampler.t_max=6", "sampler.t_min=3", "sampler.t_rec=2", "sampler.t_detail=5"]  # fmt: skip


def cells(indices: list[int]) -> set[tuple[int, int]]:
    return {divmod(c, 16) for c in indices}


@pytest.mark.parametrize("bisection", ["diagonal", "lattice"])
@pytest.mark.parametrize(("stages", "sizes"), [(3, [64, 64, 128]), (4, [32, 32, 64, 128])])
def test_stages_partition_the_grid_without_neighbours(bisection: str, stages: int, sizes: list[int]) -> None:
    parts = partition(16, stages, bisection)
    assert [len(p) for p in parts] == sizes
    assert sorted(c for p in parts for c in p) == list(range(256))
    assert cells(parts[-1]) == {(i, j) for i in range(16) for j in range(16) if (i + j) % 2 == 1}
    for part in parts:  # no two tokens of a stage (so of any of its steps) share an edge
        members = cells(part)
        assert not any((i + 1, j) in members or (i, j + 1) in members for i, j in members)


def test_bisection_variants_follow_their_rules() -> None:
    diagonal, lattice = partition(16, 3, "diagonal"), partition(16, 3, "lattice")
    assert cells(diagonal[0]) == {(i, j) for i in range(16) for j in range(16) if (i + j) % 4 == 0}
    assert cells(lattice[0]) == {(i, j) for i in range(0, 16, 2) for j in range(0, 16, 2)}
    assert cells(lattice[1]) == {(i, j) for i in range(1, 16, 2) for j in range(1, 16, 2)}


def test_paper_literal_counts_and_diffusion_steps() -> None:
    run = validate(compose_cfg("sampler=gtr", "sampler.stage_steps=[24,6,2]", "sampler.num_iter=32"))
    sampler = build_sampler(run.sampler)
    counts = sampler.counts(256)
    assert (
        counts[:24] == [2] * 8 + [3] * 16
        and counts[24:30] == [10, 10, 11, 11, 11, 11]
        and counts[30:] == [64, 64]
    )
    assert split_counts(64, 24) == counts[:24]
    steps = [sampler.diffusion_steps_at(s) for s in range(32)]
    assert steps == [round(50 - 30 * g / 29) for g in range(30)] + [20, 20]  # linear 50 -> 20, then t_rec
    assert steps[0] == 50 and steps[23] == 26 and steps[24:] == [25, 24, 23, 22, 21, 20, 20, 20]
    assert [s for s in range(32) if sampler.refresh_at(s)] == [0, 24, 30, 31]


class Spy(MARPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.predicted, self.refresh, self.steps, self.rows = [], [], [], []

    def transformer(self, model, tokens, rows, cond, ctx):
        self.predicted.append(ctx.predicted_now)
        self.refresh.append(ctx.refresh)
        return super().transformer(model, tokens, rows, cond, ctx)

    def diffusion_head(self, model, z, x_init, noise_fn, temperature, cfg, diffusion, ctx):
        self.steps.append(diffusion.num_timesteps)
        self.rows.append(x_init.shape[0])
        return super().diffusion_head(model, z, x_init, noise_fn, temperature, cfg, diffusion, ctx)


def test_sampling_follows_the_stages() -> None:
    run = validate(compose_cfg(*TINY, "sampler.stage_steps=[3,2,1]", "sampler.num_iter=6"))
    gen = make_generator(run)
    spy = Spy()
    out = gen.sampler.sample(gen.model, torch.tensor([1, 2]), [0, 1], spy)
    assert torch.isfinite(out).all()
    parts = [set(p) for p in partition(16, 3, "diagonal")]
    stage_of_step = [0, 0, 0, 1, 1, 2]
    for step, predicted in enumerate(spy.predicted):
        assert predicted.shape[1] == gen.sampler.counts(256)[step]
        for row in predicted.tolist():
            assert set(row) <= parts[stage_of_step[step]]
    for image in range(2):
        assert sorted(torch.cat([p[image] for p in spy.predicted]).tolist()) == list(range(256))
    assert spy.predicted[0][0].tolist() != spy.predicted[0][1].tolist()  # a random order per image
    assert spy.refresh == [True, False, False, True, False, True]
    # linear 6 -> 3 over the 5 generation steps of both sub-stages; the reconstruction step makes two
    # head calls: the FTS-selected 10% (13 of 128 per image) with t_detail, the rest with t_rec
    assert spy.steps == [6, 5, 4, 4, 3, 5, 2]
    assert spy.rows[-2:] == [2 * 13, 2 * 115]


def test_subsample_is_a_four_quadrant_raster() -> None:
    order = subsample_order(16)
    assert sorted(order) == list(range(256))
    corners = [(0, 0), (0, 8), (8, 0), (8, 8)]
    assert [divmod(c, 16) for c in order[:8]] == corners + [(a, b + 1) for a, b in corners]
    for q, (a, b) in enumerate(corners):  # each quadrant in raster order
        assert [divmod(c, 16) for c in order[q::4]] == [(a + r, b + c) for r in range(8) for c in range(8)]


@pytest.mark.parametrize("order", ["raster", "subsample", "random"])
def test_order_ablations_keep_the_counts_and_predict_every_token_once(order: str) -> None:
    run = validate(
        compose_cfg(*TINY, "sampler.stage_steps=[3,2,1]", "sampler.num_iter=6", f"sampler.order={order}")
    )
    gen = make_generator(run)
    spy = Spy()
    gen.sampler.sample(gen.model, torch.tensor([1, 2]), [0, 1], spy)
    assert [p.shape[1] for p in spy.predicted] == gen.sampler.counts(256)
    revealed = [torch.cat([p[image] for p in spy.predicted]).tolist() for image in range(2)]
    assert all(sorted(r) == list(range(256)) for r in revealed)
    if order == "raster":
        assert revealed[0] == revealed[1] == list(range(256))  # per step the set is what counts
    elif order == "subsample":
        first = set(revealed[0][: gen.sampler.counts(256)[0]])
        assert first == set(subsample_order(16)[: len(first)])
    else:
        assert revealed[0] != revealed[1]
    assert spy.steps[:5] == [6, 5, 4, 4, 3]  # the stage-aware diffusion steps are GtR's


def test_frequency_scores_weigh_high_frequencies() -> None:
    d = 16
    constant, smooth = torch.ones(d), torch.cos(torch.arange(d) * 2 * torch.pi / d)
    alternating = torch.tensor([1.0, -1.0] * (d // 2))
    scores = frequency_scores(torch.stack([constant, smooth, alternating]))
    assert scores[0] == pytest.approx(0, abs=1e-5)  # the DC bin is left out
    # equal energy, but the alternating vector sits in the top bin (weight 2) and the smooth one in bin 1
    assert scores[2] / scores[1] == pytest.approx(2 * d / (d / 2) / (1 + 1 / (d / 2)), rel=1e-5)


@pytest.mark.parametrize(
    ("select", "count"), [("high", 2), ("low", 2), ("random", 2), ("all", 12), ("none", 0)]
)
def test_fts_selections(select: str, count: int) -> None:
    run = validate(compose_cfg("sampler=gtr", f"sampler.fts_select={select}", "sampler.fts_fraction=0.1"))
    sampler = build_sampler(run.sampler)
    z = torch.randn(3, 12, 16)
    z[:, 5] = torch.tensor([4.0, -4.0] * 8)  # token 5: all energy in the highest frequency
    z[:, 7] = 0.01  # token 7: nearly flat
    chosen = sampler.detail_tokens(z, PerSampleRandom([0, 1, 2]))
    assert chosen.shape == (3, count)
    if select == "high":
        assert (chosen == 5).any(dim=1).all()
    if select == "low":
        assert (chosen == 7).any(dim=1).all()


def test_gtr_with_lazymar_refreshes_at_stage_starts() -> None:
    run = validate(compose_cfg(*TINY, "sampler.stage_steps=[8,3,1]", "sampler.num_iter=12", "cache=lazymar",
                               "cache.selection_layer=1", "cache.refresh_start=2", "cache.refresh_interval=20"))  # fmt: skip
    gen = make_generator(run)
    out = gen.sampler.sample(gen.model, torch.tensor([1, 2]), [0, 1], gen.policy)
    assert torch.isfinite(out).all()
    # full: steps 0, 1 (before refresh_start), 2 (the schedule), 8 (stage 2 starts), 11 (reconstruction)
    assert gen.policy.stats.full_steps == 5 and gen.policy.stats.reused_steps == 7


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [(["sampler.stage_steps=[11,3,3]", "sampler.num_iter=16"], "must equal the sum"), (["sampler.stage_steps=[11,5]"], "one step count per stage"),
     (["sampler.stage_steps=[70,3,2]", "sampler.num_iter=75"], "between 1 and the stage's size"),
     (["sampler.bisection=spiral"], "sampler.bisection"), (["sampler.order=zigzag"], "sampler.order"), (["sampler.t_rec=1"], "sampler.t_rec=1"),
     (["sampler.diffusion_steps=10"], "does not apply to sampler=gtr"),
     (["sampler.fts_select=mid"], "sampler.fts_select"), (["sampler.fts_fraction=2"], "fts_fraction=2.0")],
)  # fmt: skip
def test_bad_gtr_settings_are_clear_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate(compose_cfg("sampler=gtr", *overrides))


def test_meta_flop_count_equals_a_real_count() -> None:
    """FTS picks tokens by value, but its shapes are fixed: the meta-device count must stay exact."""
    from lazygen.metrics.perf import measure_flops

    run = validate(compose_cfg(*TINY, "sampler.stage_steps=[3,2,1]", "sampler.num_iter=6"))
    labels, seeds = torch.tensor([1, 2]), [0, 1]
    meta = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "meta")
    real = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "real")
    assert meta.device == "meta" and meta.tflops_per_img == real.tflops_per_img > 0
