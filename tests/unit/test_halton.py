"""sampler=halton: the Halton reveal order (reference/gtr_baselines.md §2) on MAR's sampler."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cfg

from lazygen.cache import NoCache
from lazygen.config import validate
from lazygen.errors import ConfigError
from lazygen.run import make_generator
from lazygen.samplers.halton import arccos_schedule, halton_cells, radical_inverse
from lazygen.samplers.mar import mask_schedule
from lazygen.samplers.rng import PerSampleRandom

TINY = ["model.init=random", "model.arch.encoder_embed_dim=32", "model.arch.decoder_embed_dim=32",
        "model.arch.encoder_depth=2", "model.arch.decoder_depth=2", "model.arch.diffloss_d=2",
        "model.arch.diffloss_w=32", "sampler=halton", "sampler.num_iter=6", "sampler.diffusion_steps=3"]  # fmt: skip
FIRST_16 = [(8, 5), (4, 10), (12, 1), (2, 7), (10, 12), (6, 3), (14, 8), (1, 14), (9, 0), (5, 5), (13, 11), (3, 2),
            (11, 7), (7, 13), (15, 4), (0, 9)]  # fmt: skip


def test_radical_inverse() -> None:
    assert [radical_inverse(k, 2) for k in (1, 2, 3)] == [0.5, 0.25, 0.75]
    assert float(radical_inverse(3, 3)) == pytest.approx(1 / 9)


def test_halton_cells_cover_the_grid_in_the_published_order() -> None:
    cells = halton_cells(16)
    assert sorted(cells) == list(range(256))
    assert [divmod(c, 16) for c in cells[:16]] == FIRST_16


@pytest.mark.parametrize(
    ("steps", "counts"),
    [(16, [10, 10, 10, 11, 10, 11, 11, 12, 12, 13, 13, 15, 16, 19, 25, 58]),
     (8, [20, 21, 21, 23, 25, 28, 35, 83])],
)  # fmt: skip
def test_arccos_schedule_counts(steps: int, counts: list[int]) -> None:
    remaining = [256, *arccos_schedule(256, steps)]
    assert [a - b for a, b in zip(remaining, remaining[1:], strict=False)] == counts


class Spy(NoCache):
    """Records what the sampler predicts at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.predicted: list[torch.Tensor] = []

    def transformer(self, model, tokens, rows, cond, ctx):
        self.predicted.append(ctx.predicted_now)
        return super().transformer(model, tokens, rows, cond, ctx)


def run_spy(*overrides: str, seeds=(0, 1, 2)):
    gen = make_generator(validate(compose_cfg(*TINY, *overrides)))
    spy = Spy()
    out = gen.sampler.sample(gen.model, torch.tensor([1, 2, 3]), list(seeds), spy)
    return out, spy.predicted, gen.sampler


def test_without_randomize_every_image_reveals_the_halton_order() -> None:
    out, predicted, _ = run_spy("sampler.randomize=false")
    assert torch.isfinite(out).all()
    counts = [256 - mask_schedule(256, 6)[0]]
    first = sorted(halton_cells(16)[: counts[0]])
    for image in range(3):
        assert predicted[0][image].tolist() == first
    everything = torch.cat(predicted, dim=1)
    assert all(sorted(row.tolist()) == list(range(256)) for row in everything)  # each token once


def test_randomize_rolls_the_order_per_image_by_its_seed() -> None:
    _, predicted, sampler = run_spy()
    cells = list(halton_cells(16))
    n = predicted[0].shape[1]
    for image, seed in enumerate((0, 1, 2)):
        shift = PerSampleRandom([seed]).offsets(1, 256)[0]
        assert predicted[0][image].tolist() == sorted((cells[shift:] + cells[:shift])[:n])
    _, again, _ = run_spy(seeds=(2, 1, 0))
    assert again[0][0].tolist() == predicted[0][2].tolist()  # an image's order depends on its seed only


def test_halton_composes_with_lazymar_and_is_an_accelerated_run() -> None:
    from lazygen.build import is_accelerated

    run = validate(compose_cfg(*TINY, "cache=lazymar", "cache.selection_layer=1", "cache.refresh_start=2",
                               "cache.refresh_interval=2"))  # fmt: skip
    gen = make_generator(run)
    out = gen.sampler.sample(gen.model, torch.tensor([1, 2]), [0, 1], gen.policy)
    assert torch.isfinite(out).all() and gen.policy.stats.reused_steps == 2
    assert is_accelerated(validate(compose_cfg("sampler=halton")))


def test_unknown_schedule_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="sampler.schedule='linear'"):
        validate(compose_cfg(*TINY, "sampler.schedule=linear"))
