"""lazygen's KL-16 autoencoder against outputs of the official MAR ``AutoencoderKL`` on a tiny random config."""

from __future__ import annotations

import copy

import pytest
import torch

from lazygen.models.vae import LATENT_SCALE, AutoencoderKL, DiagonalGaussian
from lazygen.models.vae.kl import LOGVAR_MAX, LOGVAR_MIN

FIXTURE_EMBED_DIM = 16
# Tolerance relative to the largest expected magnitude: the tiny decoder stacks ~30 fp32 convs and its
# output reaches |x| ~ 4, so element-wise atol=1e-5 is below CPU accumulation-order noise (~2e-5 abs,
# ~5e-6 of the peak, seen with either attention kernel and any thread count).
REL_TOL = 1e-5
SEED = 1234

KL16_PARAMS_M = 66.46
KL16_ENCODER_PARAMS_M = 28.27
KL16_DECODER_PARAMS_M = 38.19
PARAMS_TOL_M = 0.01
KL16_STATE_TENSORS = 312


def assert_close_to_peak(actual: torch.Tensor, expected: torch.Tensor) -> None:
    actual = actual.cpu()
    peak = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=REL_TOL, atol=REL_TOL * peak)


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.fixture(scope="module")
def kl_fixture(mar_fixture: dict) -> dict:
    return mar_fixture["kl_vae"]  # the autoencoder's part of the MAR fixture (loaded once per session)


@pytest.fixture(scope="module")
def vae(kl_fixture: dict) -> AutoencoderKL:
    return AutoencoderKL(**kl_fixture["ddconfig"], embed_dim=FIXTURE_EMBED_DIM).eval()


@pytest.fixture(scope="module")
def loaded(vae: AutoencoderKL, kl_fixture: dict) -> AutoencoderKL:
    result = vae.load_state_dict(kl_fixture["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return vae


@pytest.fixture(scope="module")
def on_device(loaded: AutoencoderKL, device: torch.device) -> AutoencoderKL:
    """The loaded autoencoder on the tests' device (a copy: the CPU tests below keep theirs)."""
    return copy.deepcopy(loaded).to(device)


def test_strict_load_with_official_names_and_shapes(loaded: AutoencoderKL, kl_fixture: dict) -> None:
    ours = {k: tuple(v.shape) for k, v in loaded.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in kl_fixture["state_dict"].items()}
    assert ours == theirs


@torch.no_grad()
def test_decode_matches_official(on_device: AutoencoderKL, kl_fixture: dict, device: torch.device) -> None:
    out = on_device.decode(kl_fixture["z"].to(device))
    assert out.shape == kl_fixture["decode_out"].shape
    assert_close_to_peak(out, kl_fixture["decode_out"])


@torch.no_grad()
def test_encode_moments_match_official(
    on_device: AutoencoderKL, kl_fixture: dict, device: torch.device
) -> None:
    moments = on_device.encode_moments(kl_fixture["encode_in"].to(device))
    assert moments.shape == kl_fixture["encode_moments"].shape
    assert_close_to_peak(moments, kl_fixture["encode_moments"])


@torch.no_grad()
def test_posterior_mean_and_seeded_sampling(loaded: AutoencoderKL, kl_fixture: dict) -> None:
    x = kl_fixture["encode_in"]
    moments = loaded.encode_moments(x)
    posterior = loaded.encode(x)
    torch.testing.assert_close(posterior.mean, moments[:, :FIXTURE_EMBED_DIM], rtol=0, atol=0)
    torch.testing.assert_close(posterior.mode(), posterior.mean, rtol=0, atol=0)

    first = posterior.sample(torch.Generator().manual_seed(SEED))
    second = posterior.sample(torch.Generator().manual_seed(SEED))
    other = posterior.sample(torch.Generator().manual_seed(SEED + 1))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)

    # noise is a plain CPU standard normal drawn from the given generator, as the official code does
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(SEED))
    torch.testing.assert_close(first, posterior.mean + posterior.std * eps, rtol=0, atol=0)


def test_logvar_is_clamped() -> None:
    channels = 2
    mean = torch.zeros(1, channels, 1, 1)
    logvar = torch.tensor([LOGVAR_MIN - 50.0, LOGVAR_MAX + 50.0]).reshape(1, channels, 1, 1)
    posterior = DiagonalGaussian.from_moments(torch.cat([mean, logvar], dim=1))
    assert posterior.logvar.flatten().tolist() == [LOGVAR_MIN, LOGVAR_MAX]
    torch.testing.assert_close(posterior.std, torch.exp(0.5 * posterior.logvar))
    assert torch.isfinite(posterior.sample(torch.Generator().manual_seed(SEED))).all()


@torch.no_grad()
def test_latent_scale_helpers(loaded: AutoencoderKL, kl_fixture: dict) -> None:
    assert loaded.latent_scale == LATENT_SCALE
    x = kl_fixture["encode_in"]
    mean = loaded.encode(x).mean
    torch.testing.assert_close(loaded.encode_to_latent(x, sample=False), mean * LATENT_SCALE)
    sampled = loaded.encode_to_latent(x, generator=torch.Generator().manual_seed(SEED))
    expected = loaded.encode(x).sample(torch.Generator().manual_seed(SEED)) * LATENT_SCALE
    torch.testing.assert_close(sampled, expected)

    z = kl_fixture["z"]
    assert_close_to_peak(loaded.decode_tokens_latent(z * LATENT_SCALE), kl_fixture["decode_out"])


def test_kl16_size_and_layout() -> None:
    with torch.device("meta"):
        vae = AutoencoderKL.kl16()
    assert millions(vae) == pytest.approx(KL16_PARAMS_M, abs=PARAMS_TOL_M)
    assert millions(vae.encoder) == pytest.approx(KL16_ENCODER_PARAMS_M, abs=PARAMS_TOL_M)
    assert millions(vae.decoder) == pytest.approx(KL16_DECODER_PARAMS_M, abs=PARAMS_TOL_M)

    state = vae.state_dict()
    assert len(state) == KL16_STATE_TENSORS
    # attention only at the 16x16 encoder level and in the two mid blocks; no upsample on decoder level 0
    attn_parents = {k.split(".attn")[0] for k in state if ".attn" in k}
    assert attn_parents == {"encoder.down.4", "encoder.mid", "decoder.mid"}
    assert "encoder.down.4.downsample.conv.weight" not in state
    assert "decoder.up.0.upsample.conv.weight" not in state
    assert tuple(state["decoder.conv_in.weight"].shape) == (512, 16, 3, 3)
    assert tuple(state["quant_conv.weight"].shape) == (32, 32, 1, 1)
