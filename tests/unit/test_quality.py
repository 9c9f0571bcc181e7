"""FID / IS / PSNR maths and the QualityMeter, with a tiny deterministic extractor (no Inception)."""

from __future__ import annotations

import math
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazygen.errors import ConfigError
from lazygen.metrics.quality import (
    CLASS_ACC_KEY,
    FID_KEY,
    IS_MEAN_KEY,
    IS_STD_KEY,
    STANDARD_ERROR_SUFFIX,
    ExtractorOutput,
    FeatureExtractor,
    InceptionV3Extractor,
    QualityMeter,
    bootstrap_standard_errors,
    compute_stats,
    frechet_distance,
    inception_score,
    load_reference_stats,
    paired_differences,
    psnr,
    save_reference_stats,
    stats_from_sums,
)

FEATURES = 16
CLASSES = 8
POOLED = 8  # images are average-pooled to POOLED x POOLED before the projection
IMG = 32
CONFIDENT_LOGIT = 50.0  # softmax of this vs 0 is one-hot to ~1e-22


class TinyExtractor(nn.Module):
    """Fixed random projection of downsampled pixels, plus a linear softmax head."""

    num_features = FEATURES

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(
            torch.randn(3 * POOLED * POOLED, FEATURES, generator=gen) / POOLED, requires_grad=False
        )
        self.head = nn.Parameter(torch.randn(FEATURES, CLASSES, generator=gen), requires_grad=False)

    def forward(self, images: Tensor) -> ExtractorOutput:
        x = F.adaptive_avg_pool2d(images.float() / 255.0, POOLED).flatten(1)
        features = x @ self.proj
        return ExtractorOutput(features, features @ self.head)


def random_images(n: int, seed: int, low: int = 0, high: int = 256) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, IMG, IMG), generator=gen, dtype=torch.uint8)


def random_spd(dim: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim * 2, generator=gen, dtype=torch.float64)
    return a @ a.T / (2 * dim) + 1e-3 * torch.eye(dim, dtype=torch.float64)


# ------------------------------------------------------------------------------------ Fréchet distance


@pytest.mark.parametrize("method", ["scipy", "torch"])
def test_frechet_identical_stats_is_zero(method: str) -> None:
    mu, sigma = torch.randn(FEATURES, dtype=torch.float64), random_spd(FEATURES, seed=1)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-6


@pytest.mark.parametrize("method", ["scipy", "torch"])
def test_frechet_diagonal_closed_form(method: str) -> None:
    mu1, mu2 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 0.0, 2.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2 + s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2), method=method)
    assert got == pytest.approx(expected, abs=1e-9)
    one_d = frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]), method=method
    )
    assert one_d == pytest.approx((1 - 3) ** 2 + 4 + 1 - 2 * 2, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_scipy_and_torch_agree(seed: int) -> None:
    dim = 64
    mu1, mu2 = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    sigma1, sigma2 = random_spd(dim, seed), random_spd(dim, seed + 100)
    scipy_fid = frechet_distance(mu1, sigma1, mu2, sigma2, method="scipy")
    torch_fid = frechet_distance(mu1, sigma1, mu2, sigma2, method="torch")
    assert torch_fid == pytest.approx(scipy_fid, rel=1e-8, abs=1e-8)


def test_frechet_rejects_bad_method_and_shapes() -> None:
    mu, sigma = torch.zeros(3), torch.eye(3)
    with pytest.raises(ConfigError, match="Use one of"):
        frechet_distance(mu, sigma, mu, sigma, method="svd")
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, torch.zeros(4), torch.eye(4))


def test_compute_stats_is_unbiased_and_matches_sums() -> None:
    feats = torch.randn(50, 5, dtype=torch.float64)
    mu, sigma = compute_stats(feats)
    assert torch.allclose(mu, torch.from_numpy(feats.numpy().mean(0)))
    assert torch.allclose(sigma, torch.from_numpy(np.cov(feats.numpy(), rowvar=False, ddof=1)))
    mu_s, sigma_s = stats_from_sums(feats.sum(0), feats.T @ feats, feats.shape[0])
    assert torch.allclose(mu_s, mu) and torch.allclose(sigma_s, sigma)


# ------------------------------------------------------------------------------------ reference stats


def test_reference_stats_round_trip(tmp_path) -> None:
    mu, sigma = torch.randn(FEATURES, dtype=torch.float64), random_spd(FEATURES, seed=3)
    path = tmp_path / "ref.npz"
    save_reference_stats(path, mu, sigma)
    mu2, sigma2 = load_reference_stats(path)
    assert mu2.dtype == sigma2.dtype == torch.float64
    assert torch.equal(mu2, mu) and torch.equal(sigma2, sigma)
    np.savez(tmp_path / "adm.npz", mu=mu.float().numpy(), sigma=sigma.float().numpy(), arr_0=np.zeros(1))
    mu3, _ = load_reference_stats(tmp_path / "adm.npz")  # ADM-style extra keys, float32 arrays
    assert mu3.dtype == torch.float64


def test_reference_stats_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "nokeys.npz", arr_0=np.zeros(3))
    with pytest.raises(ConfigError, match="lacks the keys"):
        load_reference_stats(tmp_path / "nokeys.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="Could not read"):
        load_reference_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.zeros((3, 4)))
    with pytest.raises(ConfigError, match="expected"):
        load_reference_stats(tmp_path / "shape.npz")


# ------------------------------------------------------------------------------------ Inception score


def test_is_of_uniform_logits_is_one() -> None:
    mean, std = inception_score(torch.zeros(100, CLASSES), splits=10)
    assert mean.item() == pytest.approx(1.0, abs=1e-12)
    assert std.item() == pytest.approx(0.0, abs=1e-12)


def test_is_of_confident_balanced_logits_is_num_classes() -> None:
    n = CLASSES * 50
    logits = CONFIDENT_LOGIT * F.one_hot(torch.arange(n) % CLASSES, CLASSES).float()
    mean, std = inception_score(logits, splits=5, seed=None)  # contiguous chunks are exactly balanced
    assert mean.item() == pytest.approx(CLASSES, rel=1e-9)
    assert std.item() == pytest.approx(0.0, abs=1e-9)
    shuffled, _ = inception_score(logits, splits=5)  # seeded shuffle: chunks only nearly balanced
    assert shuffled.item() == pytest.approx(CLASSES, rel=0.05)
    assert shuffled.item() == inception_score(logits, splits=5)[0].item()  # deterministic


def test_is_matches_torch_fidelity_algorithm() -> None:
    """The torch-fidelity isc_features_to_metric recipe, spelled out, on random logits."""
    logits = torch.randn(103, CLASSES) * 3
    splits, seed = 4, 2020
    shuffled = logits[np.random.RandomState(seed).permutation(logits.shape[0])].double()
    p, log_p = shuffled.softmax(1), shuffled.log_softmax(1)
    n = shuffled.shape[0]
    scores = []
    for i in range(splits):
        pc, lpc = p[i * n // splits : (i + 1) * n // splits], log_p[i * n // splits : (i + 1) * n // splits]
        scores.append((pc * (lpc - pc.mean(0, keepdim=True).log())).sum(1).mean().exp().item())
    mean, std = inception_score(logits, splits=splits, seed=seed)
    assert mean.item() == pytest.approx(float(np.mean(scores)), rel=1e-12)
    assert std.item() == pytest.approx(float(np.std(scores)), rel=1e-9)


def test_is_handles_underflowing_probabilities() -> None:
    logits = 1e4 * F.one_hot(torch.arange(20) % 2, CLASSES).float()  # exp(-1e4) underflows to 0
    mean, _ = inception_score(logits, splits=2, seed=None)
    assert mean.item() == pytest.approx(2.0, rel=1e-9)


# ------------------------------------------------------------------------------------ PSNR


def test_psnr_known_values() -> None:
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10  # every value off by 10: mse = 100
    expected = 10 * math.log10(255.0**2 / 100.0)
    values = psnr(a, b)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values[0].item() == pytest.approx(expected, rel=1e-12)
    assert values[1].item() == math.inf  # identical image
    assert psnr(a, b, cap_db=200.0)[1].item() == 200.0
    assert psnr(a[0], b[0]).item() == pytest.approx(expected)  # a single (C, H, W) image
    one_lsb = a[1:].clone()
    one_lsb[0, 0, 0, 0] = 1  # one value off by 1 of 48: mse = 1/48
    assert psnr(a[1:], one_lsb).item() == pytest.approx(10 * math.log10(255.0**2 * 48), rel=1e-12)


def test_psnr_checks_inputs() -> None:
    with pytest.raises(TypeError):
        psnr(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, 3, 2, 3, dtype=torch.uint8))


# ------------------------------------------------------------------------------------ QualityMeter


def test_toy_extractor_satisfies_protocol() -> None:
    assert isinstance(TinyExtractor(), FeatureExtractor)


def test_meter_fid_same_set_is_zero_and_shifted_set_is_larger() -> None:
    images = random_images(64, seed=0)
    meter = QualityMeter(TinyExtractor(), splits=4)
    meter.update_real(images)
    for batch in images.split(16):
        meter.update(batch)
    same = meter.compute()
    assert abs(same[FID_KEY].item()) < 1e-6

    meter.reset()
    meter.update_real(images)
    meter.update(random_images(64, seed=1, low=100, high=256))  # brighter: shifted features
    shifted = meter.compute()[FID_KEY].item()
    assert shifted > 1e-2

    fresh = QualityMeter(TinyExtractor(), splits=4)
    fresh.update_real(random_images(64, seed=2))  # another draw of the same distribution
    fresh.update(images)
    assert fresh.compute()[FID_KEY].item() < shifted


def test_meter_against_reference_npz_matches_direct_computation(tmp_path) -> None:
    extractor = TinyExtractor()
    real, fake = random_images(40, seed=3), random_images(30, seed=4, low=50)
    real_mu, real_sigma = compute_stats(extractor(real).features)
    path = tmp_path / "ref.npz"
    save_reference_stats(path, real_mu, real_sigma)

    meter = QualityMeter(extractor, reference_stats=path, splits=3)
    meter.update(fake)
    result = meter.compute()
    fake_out = extractor(fake)
    expected = frechet_distance(*compute_stats(fake_out.features), real_mu, real_sigma)
    assert result[FID_KEY].item() == pytest.approx(expected, rel=1e-9)
    is_mean, is_std = inception_score(fake_out.logits, splits=3)
    assert result[IS_MEAN_KEY].item() == pytest.approx(is_mean.item(), rel=1e-12)
    assert result[IS_STD_KEY].item() == pytest.approx(is_std.item(), rel=1e-9)

    with pytest.raises(ConfigError, match="one FID reference"):
        meter.update_real(real)


def test_meter_merge_equals_single_meter() -> None:
    """What DDP does at compute(): sum the FID moments and concatenate the logits, rank-major."""
    images, real = random_images(48, seed=5), random_images(48, seed=6)
    whole = QualityMeter(TinyExtractor(), splits=4)
    whole.update_real(real)
    whole.update(images)
    rank0, rank1 = QualityMeter(TinyExtractor(), splits=4), QualityMeter(TinyExtractor(), splits=4)
    rank0.update_real(real[:20])
    rank1.update_real(real[20:])
    rank0.update(images[:24])
    rank1.update(images[24:])
    rank1.merge_state(rank0)  # torchmetrics puts the incoming state first: rank0's logits, then rank1's
    merged, expected = rank1.compute(), whole.compute()
    for key in (FID_KEY, IS_MEAN_KEY, IS_STD_KEY):
        assert merged[key].item() == pytest.approx(expected[key].item(), rel=1e-9, abs=1e-12)


def test_meter_reset_can_keep_real_features() -> None:
    real, fake = random_images(32, seed=7), random_images(32, seed=8)
    meter = QualityMeter(TinyExtractor(), splits=2, reset_real_features=False)
    meter.update_real(real)
    meter.update(fake)
    first = meter.compute()[FID_KEY].item()
    meter.reset()
    assert int(meter.fake_count) == 0 and int(meter.real_count) == real.shape[0]
    meter.update(fake)
    assert meter.compute()[FID_KEY].item() == pytest.approx(first, rel=1e-12)


def test_meter_class_accuracy_counts_agreement_with_the_labels() -> None:
    extractor = TinyExtractor()
    images = random_images(20, seed=5)
    predicted = extractor(images).logits.argmax(1)
    labels = predicted.clone()
    labels[:5] = (labels[:5] + 1) % CLASSES  # 5 of 20 disagree
    meter = QualityMeter(extractor, splits=2)
    meter.update(images[:12], labels[:12])
    meter.update(images[12:], labels[12:])
    assert float(meter.compute()[CLASS_ACC_KEY]) == pytest.approx(0.75)
    unlabelled = QualityMeter(extractor, splits=2)
    unlabelled.update(images)
    assert CLASS_ACC_KEY not in unlabelled.compute()


def test_paired_differences_cancel_the_luck_both_runs_share() -> None:
    """Two runs of the same seeds: most of the spread of their FIDs is the draw they share (here the class
    of each row), so the paired error of B - A is well below the two runs' own errors combined."""
    gen = torch.Generator().manual_seed(0)
    num, dim = 300, 6
    classes = torch.randint(0, 10, (num,), generator=gen)
    centres = 3 * torch.randn(10, dim, generator=gen)
    run_a = centres[classes] + torch.randn(num, dim, generator=gen)
    run_b = run_a + 0.2 * torch.randn(num, dim, generator=gen) + 0.3  # slightly worse, same draw
    reference = compute_stats(centres[torch.arange(10).repeat(50)] + torch.randn(500, dim, generator=gen))
    hits_a, hits_b = (torch.rand(num, generator=gen) < p for p in (0.9, 0.8))

    out = paired_differences((run_a, run_b), (hits_a, hits_b), reference, replicates=100, seed=1)
    fid_a, fid_b = (frechet_distance(*compute_stats(f), *reference) for f in (run_a, run_b))
    assert out[FID_KEY + "_diff"] == pytest.approx(fid_b - fid_a)
    assert out[CLASS_ACC_KEY + "_diff"] == pytest.approx(
        float(hits_b.double().mean() - hits_a.double().mean())
    )
    own = [bootstrap_standard_errors(f, None, reference, 100, seed=1)[FID_KEY + STANDARD_ERROR_SUFFIX]
           for f in (run_a, run_b)]  # fmt: skip
    paired_se = out[FID_KEY + "_diff" + STANDARD_ERROR_SUFFIX]
    assert 0 < paired_se < 0.6 * math.hypot(*own)  # resampled apart, it would be about the hypot
    assert 0 < out[CLASS_ACC_KEY + "_diff" + STANDARD_ERROR_SUFFIX] < 0.1

    same = paired_differences((run_a, run_a.clone()), None, reference, replicates=20, seed=1)
    assert same[FID_KEY + "_diff"] == 0 and same[FID_KEY + "_diff" + STANDARD_ERROR_SUFFIX] == 0
    assert CLASS_ACC_KEY + "_diff" not in same
    with pytest.raises(ValueError, match="one shape"):
        paired_differences((run_a, run_b[:10]), None, reference, replicates=2, seed=0)


def test_meter_errors() -> None:
    meter = QualityMeter(TinyExtractor(), splits=2)
    meter.update(random_images(4, seed=9))
    assert set(meter.compute()) == {IS_MEAN_KEY, IS_STD_KEY}  # no reference: no FID
    meter.update_real(random_images(1, seed=9))
    with pytest.raises(ConfigError, match="at least 2"):
        meter.compute()
    with pytest.raises(ConfigError, match="at least"):
        few = QualityMeter(TinyExtractor(), splits=10)
        few.update_real(random_images(4, seed=9))
        few.update(random_images(4, seed=9))
        few.compute()
    with pytest.raises(ConfigError, match="num_features"):
        QualityMeter(nn.Identity())
    with pytest.raises(ConfigError, match="same extractor"):
        QualityMeter(TinyExtractor(), reference_stats=(torch.zeros(3), torch.eye(3)))
    with pytest.raises(ConfigError, match="splits"):
        QualityMeter(TinyExtractor(), splits=0)
    with pytest.raises(TypeError):
        meter.update(torch.zeros(2, 3, IMG, IMG))


def test_meter_state_dict_excludes_extractor_and_loads_strictly() -> None:
    holder = nn.Module()
    holder.meter = QualityMeter(TinyExtractor())
    holder.net = nn.Linear(2, 2)
    state = holder.state_dict()
    assert not any(".extractor." in key for key in state)
    before = holder.meter.extractor.proj.clone()
    holder.load_state_dict(state, strict=True)
    assert torch.equal(holder.meter.extractor.proj, before)


def test_meter_keeps_extractor_in_eval() -> None:
    extractor = TinyExtractor()
    extractor.norm = nn.BatchNorm1d(FEATURES)  # a stand-in for Inception's BatchNorm layers
    meter = QualityMeter(extractor)
    meter.train()
    assert meter.training and not extractor.training


# ------------------------------------------------------------------------------------ InceptionV3


def test_inception_extractor_without_torch_fidelity_gives_install_hint(monkeypatch) -> None:
    # None in sys.modules makes `import torch_fidelity...` raise ImportError even where it is installed.
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ConfigError, match=r"pip install 'lazygen\[eval\]'") as info:
        InceptionV3Extractor()
    assert "another feature extractor" in str(info.value)


def _install_fake_torch_fidelity(monkeypatch, fail_download: bool) -> None:
    """A stand-in for torch_fidelity's module: same constructor and (features, logits) tuple output."""
    import types
    import urllib.error

    class FakeInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None) -> None:
            super().__init__()
            assert features_list == ["2048", "logits_unbiased"]
            if feature_extractor_weights_path is None and fail_download:
                raise urllib.error.URLError("no network")
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return torch.zeros(x.shape[0], 2048), torch.zeros(x.shape[0], 1008)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    monkeypatch.delenv("LAZYGEN_INCEPTION_WEIGHTS", raising=False)


def test_inception_extractor_wraps_torch_fidelity(monkeypatch) -> None:
    _install_fake_torch_fidelity(monkeypatch, fail_download=False)
    extractor = InceptionV3Extractor()
    out = extractor(torch.zeros(2, 3, IMG, IMG, dtype=torch.uint8))
    assert (
        isinstance(out, ExtractorOutput) and out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    )
    assert not extractor.train().training
    assert isinstance(extractor, FeatureExtractor)


def test_inception_extractor_offline_download_gives_weights_hint(monkeypatch) -> None:
    _install_fake_torch_fidelity(monkeypatch, fail_download=True)
    with pytest.raises(ConfigError, match="LAZYGEN_INCEPTION_WEIGHTS"):
        InceptionV3Extractor()


def test_inception_extractor_missing_weights_file(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        InceptionV3Extractor(weights_path=tmp_path / "nope.pth")
    monkeypatch.setenv("LAZYGEN_INCEPTION_WEIGHTS", str(tmp_path / "from_env.pth"))
    with pytest.raises(ConfigError, match="from_env.pth"):
        InceptionV3Extractor()


# ------------------------------------------------------------------------------------ DDP (gloo, 2 ranks)

WORLD = 2
DDP_TIMEOUT = timedelta(seconds=120)  # a failing rank must not leave the other blocked forever


def _ddp_worker(rank: int, init_file: str, images: Tensor, real: Tensor, results: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=DDP_TIMEOUT
    )
    try:
        meter = QualityMeter(TinyExtractor(), splits=4)
        meter.update_real(real.chunk(WORLD)[rank])
        meter.update(images.chunk(WORLD)[rank][: 20 + rank])  # uneven shards: gather pads and trims
        result = meter.compute()
        results[rank] = {key: value.item() for key, value in result.items()}
        results[f"local_count_{rank}"] = int(meter.fake_count)  # unsynced again after compute()
    finally:
        dist.destroy_process_group()


def test_meter_syncs_across_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    images, real = random_images(48, seed=10), random_images(48, seed=11)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), images, real, results), nprocs=WORLD, join=True)
        results = dict(results)
    shards = images.chunk(WORLD)
    single = QualityMeter(TinyExtractor(), splits=4)
    single.update_real(real)
    single.update(torch.cat([shards[rank][: 20 + rank] for rank in range(WORLD)]))
    expected = {key: value.item() for key, value in single.compute().items()}
    for rank in range(WORLD):
        assert results[rank] == pytest.approx(expected, rel=1e-9)
        assert results[f"local_count_{rank}"] == 20 + rank
