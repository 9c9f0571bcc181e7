"""The decoding and diffusion schedules against the numbers in the MAR reference."""

from __future__ import annotations

import pytest
import torch

from lazygen.diffusion import SpacedDiffusion, space_timesteps
from lazygen.models.mar import MAR, MARArch
from lazygen.samplers import MARSampler, MARSamplerConf, mask_schedule

# tokens predicted per step (reference §3.2)
PER_STEP = {
    32: [1, 1, 1, 2, 3, 4, 3, 5, 5, 6, 6, 7, 7, 8, 8, 8, 10, 9, 10, 10, 11, 11, 11, 12, 11, 12, 12, 13, 12, 12,
         13, 12],
    16: [2, 3, 7, 8, 11, 13, 15, 16, 19, 20, 22, 23, 23, 25, 24, 25],
}  # fmt: skip


def predicted_per_step(num_iter: int, seq_len: int = 256) -> list[int]:
    remaining = [seq_len, *mask_schedule(seq_len, num_iter)]
    return [a - b for a, b in zip(remaining, remaining[1:])]


@pytest.mark.parametrize("num_iter", sorted(PER_STEP))
def test_tokens_per_step_match_the_reference(num_iter):
    assert predicted_per_step(num_iter) == PER_STEP[num_iter]


def test_64_steps_start_with_13_single_tokens_and_256_steps_are_sequential():
    per_step = predicted_per_step(64)
    assert per_step[:13] == [1] * 13 and per_step[-1] == 6 and sum(per_step) == 256
    assert predicted_per_step(256) == [1] * 256


def test_respacing_100_keeps_the_reference_timesteps():
    kept = space_timesteps(1000, "100")
    assert len(kept) == 100 and kept[:7] == [0, 10, 20, 30, 40, 50, 61] and kept[-3:] == [979, 989, 999]
    d = SpacedDiffusion("100")
    assert d.betas[0] == pytest.approx(4.128e-5, rel=1e-3)
    assert d.betas[-1] == pytest.approx(0.99999, abs=1e-5)
    assert d.alphas_cumprod[-1] == pytest.approx(2.43e-9, rel=1e-2)


def test_per_sample_rng_makes_a_sample_independent_of_its_batch():
    torch.manual_seed(0)
    arch = MARArch(img_size=64, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, diffloss_d=1,
                   diffloss_w=32, class_num=10)  # fmt: skip
    model = MAR(arch).eval()
    sampler = MARSampler(MARSamplerConf(num_iter=4, cfg=2.0, diffusion_steps=4, rng="per_sample"))
    alone = sampler.sample(model, torch.tensor([3]), [1234])
    together = sampler.sample(model, torch.tensor([7, 3, 1]), [99, 1234, 5])
    # equal up to float rounding of differently sized matmuls (random weights amplify it)
    peak = alone.abs().max()
    assert (together[1:2] - alone).abs().max() / peak < 1e-4
    assert (together[0:1] - alone).abs().max() / peak > 0.1


def test_x0_range_keeps_a_bad_denoiser_inside_the_data_range():
    """model.clip_denoised: the clamped x0 estimate bounds the chain; without it a wrong eps explodes."""
    from lazygen.diffusion import SpacedDiffusion

    def wrong(x, t):  # eps off by 0.05 everywhere, variance value 0
        return torch.cat([x * 0 + 0.05, torch.zeros_like(x)], dim=1)

    start = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
    no_noise = lambda k, like: torch.zeros_like(like)  # noqa: E731
    clipped = SpacedDiffusion("20", x0_range=(-1.0, 2.0)).p_sample_loop(wrong, start, no_noise, 0.0)
    free = SpacedDiffusion("20").p_sample_loop(wrong, start, no_noise, 0.0)
    assert clipped.min() >= -1.0 - 1e-5 and clipped.max() <= 2.0 + 1e-5
    assert free.abs().max() > 10.0
