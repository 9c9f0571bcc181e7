"""The digits16 evaluator can tell good from bad, and its error bars mean what they say.

FID of real held-out digits must rise with every controlled damage and rise monotonically with the noise
level; the bootstrap standard errors must shrink with N as 1/sqrt(N) and match the binomial error of a
class accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lazygen.errors import LazygenError
from lazygen.floor import damage_curve
from lazygen.metrics.damage import NOISE_LEVELS, add_noise, gaussian_blur, shuffle_cells
from lazygen.metrics.quality import CLASS_ACC_KEY, FID_KEY, bootstrap_standard_errors, compute_stats

SE = "_se"
NOISY_SIGMA = 0.3  # pixel noise that lifts one prototype per class to 0.84 of real pixel diversity


@pytest.fixture(scope="module")
def curve() -> dict[str, dict[str, float]]:
    pytest.importorskip("sklearn")
    with torch.no_grad():
        return damage_curve()


def test_every_damage_raises_fid(curve):
    clean = curve["clean"][FID_KEY]
    for name, metrics in curve.items():
        if name != "clean":
            assert metrics[FID_KEY] > clean, f"{name}: FID {metrics[FID_KEY]:.1f} <= clean {clean:.1f}"


def test_fid_rises_monotonically_with_noise(curve):
    fids = [curve["clean"][FID_KEY]] + [curve[f"noise {std}"][FID_KEY] for std in NOISE_LEVELS]
    assert fids == sorted(fids) and len(set(fids)) == len(fids), fids
    # the strongest noise is far outside the bootstrap error of the clean floor
    assert fids[-1] - fids[0] > 3 * curve["clean"][FID_KEY + SE]


def test_damages_keep_shape_range_and_intensity():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=gen) * 2 - 1
    for damaged in (add_noise(x, 0.4, gen), gaussian_blur(x), shuffle_cells(x, gen)):
        assert damaged.shape == x.shape and damaged.min() >= -1 and damaged.max() <= 1
    shuffled = shuffle_cells(x, gen)
    assert not torch.equal(shuffled, x)
    cells = lambda t: t.reshape(3, 1, 8, 2, 8, 2).permute(0, 1, 2, 4, 3, 5).reshape(3, 1, 8, 8, 4)  # noqa: E731
    assert torch.equal(cells(shuffled).sort(-1).values, cells(x).sort(-1).values)  # same pixels per cell
    flat = torch.zeros(1, 1, 16, 16)
    assert torch.allclose(gaussian_blur(flat + 0.5), flat + 0.5, atol=1e-6)  # blur keeps flat regions


def test_bootstrap_errors_shrink_as_one_over_sqrt_n():
    gen = torch.Generator().manual_seed(0)
    dim = 8
    reference = compute_stats(torch.randn(20000, dim, generator=gen))
    errors = {}
    for n in (200, 3200):
        feats = torch.randn(n, dim, generator=gen) + 0.5  # a real gap (FID 2): its error is O(1/sqrt N)
        agree = torch.rand(n, generator=gen) < 0.8
        errors[n] = bootstrap_standard_errors(feats, agree, reference, replicates=200, seed=1)
    ratio = errors[200][FID_KEY + SE] / errors[3200][FID_KEY + SE]
    assert 2.5 < ratio < 6.0, ratio  # sqrt(3200 / 200) = 4
    binomial = math.sqrt(0.8 * 0.2 / 3200)
    assert abs(float(errors[3200][CLASS_ACC_KEY + SE]) / binomial - 1) < 0.25


def test_bootstrap_is_seeded():
    feats = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    reference = compute_stats(torch.randn(500, 4, generator=torch.Generator().manual_seed(1)))
    a = bootstrap_standard_errors(feats, None, reference, replicates=20, seed=3)
    b = bootstrap_standard_errors(feats, None, reference, replicates=20, seed=3)
    c = bootstrap_standard_errors(feats, None, reference, replicates=20, seed=4)
    assert a[FID_KEY + SE] == b[FID_KEY + SE] != c[FID_KEY + SE]
    assert CLASS_ACC_KEY + SE not in a


def test_diversity_sees_a_collapse_to_one_prototype_per_class():
    from lazygen.metrics.diversity import class_diversity, diversity_ratio

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    varied = (torch.rand(40, 8, 8, 3, generator=gen) * 255).to(torch.uint8)
    collapsed = varied[labels].clone()  # every image of class c is image c
    real = class_diversity(varied, labels)
    assert set(real) == {0, 1, 2, 3} and all(v > 0 for v in real.values())
    assert all(v == 0 for v in diversity_ratio(class_diversity(collapsed, labels), real).values())
    half = varied.clone()
    half[20:] = varied[:20]  # each class repeats its images once: still fairly diverse
    assert all(0.5 < v < 1.0 for v in diversity_ratio(class_diversity(half, labels), real).values())


def test_feature_diversity_tells_noise_from_varied_shapes():
    """One real digit per class plus pixel noise reads as varied in pixels but not in the evaluator's
    features; real digits plus the same noise keep their feature diversity."""
    pytest.importorskip("sklearn")
    from lazygen.data.digits16 import load_digits16, to_uint8_rgb
    from lazygen.metrics.digits_classifier import load_digits16_evaluator
    from lazygen.metrics.diversity import class_diversity, diversity_ratio, feature_class_diversity

    real, labels = load_digits16(None, "heldout")
    evaluator = load_digits16_evaluator()
    first = {int(c): int((labels == c).nonzero()[0]) for c in labels.unique()}
    prototypes = real[torch.tensor([first[int(c)] for c in labels])]
    gen = torch.Generator().manual_seed(0)

    def ratios(images: torch.Tensor) -> tuple[float, float]:
        pixels = diversity_ratio(class_diversity(to_uint8_rgb(images).numpy(), labels),
                                 class_diversity(to_uint8_rgb(real).numpy(), labels))  # fmt: skip
        features = diversity_ratio(feature_class_diversity(evaluator, to_uint8_rgb(images), labels),
                                   feature_class_diversity(evaluator, to_uint8_rgb(real), labels))  # fmt: skip
        return float(np.mean(list(pixels.values()))), float(np.mean(list(features.values())))

    noise = NOISY_SIGMA * torch.randn(real.shape, generator=gen)
    pixel, feature = ratios((prototypes + noise).clamp(-1, 1))
    assert pixel > 0.8 and feature < 0.5, (pixel, feature)
    assert ratios(real)[1] == pytest.approx(1.0)
    assert ratios((real + noise).clamp(-1, 1))[1] == pytest.approx(1.0, abs=0.05)


def test_a_run_of_the_real_digits_measures_as_the_floor(tmp_path):
    """``lazygen.floor --run`` on a run dir whose samples are the held-out digits themselves: the class-matched
    subset is the whole split, so FID equals the floor's and both diversity ratios are 1."""
    pytest.importorskip("sklearn")
    from lazygen.data.digits16 import load_digits16, to_uint8_rgb
    from lazygen.floor import real_quality, run_quality
    from lazygen.run import NPZ_FILE

    real, labels = load_digits16(None, "heldout")
    np.savez(tmp_path / NPZ_FILE, arr_0=to_uint8_rgb(real).permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
    with torch.no_grad():
        run, floor = run_quality(tmp_path), real_quality()
    assert run["quality/fid"] == pytest.approx(floor["quality/fid"], rel=1e-6)
    for key in ("diversity_ratio", "feature_diversity_ratio"):
        assert run[f"quality/{key}_min"] == pytest.approx(1.0) == run[f"quality/{key}_mean"]


def test_class_matched_subset_takes_the_first_images_of_each_class():
    from lazygen.floor import class_matched

    labels = np.array([0, 1, 0, 1, 2, 0, 2])
    assert class_matched(labels, np.array([0, 0, 1, 2])).tolist() == [0, 1, 2, 4]
    with pytest.raises(LazygenError, match="class 1"):
        class_matched(labels, np.array([1, 1, 1]))
