"""sampler=disa: diffusion step annealing (reference/gtr_baselines.md §3) on MAR's sampler."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cfg

from lazygen.cache.base import MARPolicy
from lazygen.config import validate
from lazygen.diffusion import SpacedDiffusion
from lazygen.errors import ConfigError
from lazygen.metrics.perf import measure_flops
from lazygen.run import make_generator
from lazygen.samplers.disa import annealed_steps

TINY = ["model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
        "model.arch.encoder_depth=2", "model.arch.decoder_depth=2", "model.arch.diffloss_d=2",
        "model.arch.diffloss_w=32", "sampler=disa", "sampler.num_iter=5", "sampler.upper=9",
        "sampler.lower=3"]  # fmt: skip


@pytest.mark.parametrize(
    ("num_iter", "expected"),
    [
        (16, [50, 47, 44, 41, 38, 35, 32, 29, 26, 23, 20, 17, 14, 11, 8, 5]),
        (8, [50, 43, 37, 30, 24, 17, 11, 5]),
    ],
)
def test_linear_annealing_matches_the_published_values(num_iter: int, expected: list[int]) -> None:
    assert [annealed_steps(s, num_iter, 50, 5, "linear") for s in range(num_iter)] == expected


def test_other_annealings() -> None:
    steps = range(8)
    assert [annealed_steps(s, 64, 50, 5, "linear") for s in (0, 1, 2, 3, 4)] == [50, 49, 48, 47, 47]
    assert [annealed_steps(s, 64, 50, 5, "linear") for s in (60, 61, 62, 63)] == [7, 6, 5, 5]
    assert [annealed_steps(s, 8, 50, 5, "two_stage") for s in steps] == [50] * 4 + [5] * 4
    assert [annealed_steps(s, 8, 50, 5, "constant") for s in steps] == [5] * 8
    cosine = [annealed_steps(s, 8, 50, 5, "cosine") for s in steps]
    assert cosine[0] == 50 and cosine[-1] == 5 and cosine == sorted(cosine, reverse=True)


@pytest.mark.parametrize(("steps", "distinct"), [(50, 48), (5, 5), (20, 20), (100, 96)])
def test_timestep_clipping_merges_steps_as_disa(steps: int, distinct: int) -> None:
    clipped = SpacedDiffusion(str(steps), max_timestep=950)
    assert clipped.num_timesteps == distinct and max(clipped.timestep_map) == 950
    assert SpacedDiffusion(str(steps)).num_timesteps == steps


class Spy(MARPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def diffusion_head(self, model, z, x_init, noise_fn, temperature, cfg, diffusion, ctx):
        self.steps.append(diffusion.num_timesteps)
        return super().diffusion_head(model, z, x_init, noise_fn, temperature, cfg, diffusion, ctx)


def test_each_ar_step_runs_its_annealed_diffusion() -> None:
    run = validate(compose_cfg(*TINY))
    gen = make_generator(run)
    spy = Spy()
    out = gen.sampler.sample(gen.model, torch.tensor([1, 2]), [0, 1], spy)
    assert torch.isfinite(out).all()
    assert spy.steps == [annealed_steps(s, 5, 9, 3, "linear") for s in range(5)] == [9, 7, 6, 4, 3]


def test_meta_flop_count_knows_the_steps_of_each_diffusion() -> None:
    run = validate(compose_cfg(*TINY, "sampler.max_timestep=null"))
    labels, seeds = torch.tensor([1, 2]), [0, 1]
    meta = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "meta")
    real = measure_flops(lambda dev: make_generator(run, dev), labels, seeds, "real")
    assert meta.tflops_per_img == real.tflops_per_img > 0


@pytest.mark.parametrize(
    ("override", "needle"),
    [("sampler.lower=60", "sampler.lower=60 and sampler.upper=9"), ("sampler.annealing=exp", "sampler.annealing"),
     ("sampler.diffusion_steps=10", "does not apply to sampler=disa"), ("sampler.max_timestep=1000", "950")],
)  # fmt: skip
def test_bad_disa_settings_are_clear_errors(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate(compose_cfg(*TINY, override))


def test_steps_sampler_is_mar_with_fewer_steps() -> None:
    from lazygen.build import build_sampler, is_accelerated
    from lazygen.samplers.mar import MARSampler

    run = validate(compose_cfg("sampler=steps"))
    sampler = build_sampler(run.sampler)
    assert type(sampler) is MARSampler and run.sampler.name == "steps" and sampler.conf.num_iter == 16
    assert is_accelerated(run)
    assert (
        build_sampler(validate(compose_cfg("sampler=steps", "sampler.num_iter=8")).sampler).conf.num_iter == 8
    )
