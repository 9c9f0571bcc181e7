"""The training side: digits16 split, MAR's and LlamaGen's objectives, the diffusion loss terms, EMA and LR
schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import REPO
from hydra import compose, initialize_config_dir

from lazygen.build import build_model
from lazygen.config import LlamaGenModelConf, WeightsConf, typed_group
from lazygen.data.digits16 import DatasetConf, load_digits16, split_indices, to_uint8_rgb
from lazygen.diffusion.gaussian import SpacedDiffusion, discretized_gaussian_log_likelihood, normal_kl
from lazygen.errors import ConfigError
from lazygen.lit.training import EMA, RecipeConf, lr_factor, truncated_normal
from lazygen.models.llamagen import LlamaGen
from lazygen.train import train_job
from lazygen.weights import read_state_dict, sha256_of

WINDOW = 8  # steps averaged at the start and the end of a short fit


def test_digits16_split_is_stratified_disjoint_and_seeded():
    images, labels = load_digits16(split="all")
    assert images.shape == (1797, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    train, heldout = split_indices(labels.numpy(), 0.2, seed=0)
    assert len(np.intersect1d(train, heldout)) == 0 and len(train) + len(heldout) == 1797
    per_class = np.bincount(labels.numpy()[heldout], minlength=10) / np.bincount(labels.numpy(), minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    again, _ = split_indices(labels.numpy(), 0.2, seed=0)
    other, _ = split_indices(labels.numpy(), 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    x, y = load_digits16(DatasetConf(), "heldout")
    assert len(x) == len(heldout) and torch.equal(y, labels[torch.from_numpy(heldout)])
    assert to_uint8_rgb(x[:2]).shape == (2, 3, 16, 16)


def test_bad_dataset_settings_are_config_errors():
    with pytest.raises(ConfigError, match="heldout_fraction"):
        load_digits16(DatasetConf(heldout_fraction=1.5))
    with pytest.raises(ConfigError, match="digits16"):
        load_digits16(DatasetConf(name="cifar"))


def test_truncated_normal_stays_in_range_and_leans_to_the_top():
    gen = torch.Generator().manual_seed(0)
    draws = [truncated_normal(0.7, 1.0, 1.0, 0.25, gen) for _ in range(2000)]
    assert min(draws) >= 0.7 and max(draws) <= 1.0
    # density of N(1, 0.25) on [0.7, 1]: the mean is 1 - 0.25 * (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2))
    phi = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    expected = 1 - 0.25 * (phi(0) - phi(-1.2)) / (cdf(0) - cdf(-1.2))
    assert abs(np.mean(draws) - expected) < 0.01


def test_lr_schedule_warms_up_then_decays_to_zero():
    r = RecipeConf(max_steps=100, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(0, r) == pytest.approx(0.1) and lr_factor(9, r) == pytest.approx(1.0)
    assert lr_factor(10, r) == pytest.approx(1.0) and lr_factor(100, r) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, r) == pytest.approx(0.5)
    assert lr_factor(80, RecipeConf(max_steps=100, warmup_steps=10, lr_schedule="constant")) == 1.0


def test_ema_tracks_the_weights():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(40):
        ema.update(net)
    assert torch.allclose(ema.state_dict()["weight"], torch.ones(2, 2), atol=1e-6)


def test_diffusion_loss_terms():
    # KL of equal Gaussians is 0; the discretized likelihood over all 256 bins sums to one
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-6)
    assert torch.all(normal_kl(m, lv, m + 0.5, lv) > 0)
    bins = torch.linspace(-1, 1, 256)
    probs = discretized_gaussian_log_likelihood(
        bins, torch.full_like(bins, 0.1), torch.full_like(bins, -1.0)
    ).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-3)
    # a denoiser that returns the true noise has zero MSE; the VB term then only trains the variance
    diffusion = SpacedDiffusion(1000)
    x0, noise = torch.randn(64, 1), torch.randn(64, 1)
    k = torch.arange(64) * 15
    a = torch.from_numpy(diffusion.sqrt_alphas_cumprod).float()[k].unsqueeze(1)
    b = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod).float()[k].unsqueeze(1)

    def oracle(x_t, t):  # recovers eps from x_t and x0, variance value 1 = log(beta)
        return torch.cat([(x_t - a * x0) / b, torch.ones_like(x_t)], dim=1)

    def wrong(x_t, t):
        return torch.cat([torch.zeros_like(x_t), torch.ones_like(x_t)], dim=1)

    good, bad = diffusion.training_loss(oracle, x0, k, noise), diffusion.training_loss(wrong, x0, k, noise)
    assert good.shape == (64,) and torch.all(good >= -1e-4)
    assert good.mean() < 0.2 * bad.mean()


def _train_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _falls(losses: list[float]) -> bool:
    return np.mean(losses[-WINDOW:]) < 0.8 * np.mean(losses[:WINDOW])


def test_mar_training_runs_and_the_loss_falls(tmp_path):
    cfg = _train_cfg(
        "model.arch.encoder_embed_dim=32",
        "model.arch.decoder_embed_dim=32",
        "model.arch.encoder_depth=1",
        "model.arch.decoder_depth=1",
        "model.arch.diffloss_d=2",
        "model.arch.diffloss_w=32",
        "recipe.max_steps=60",
        "recipe.batch_size=16",
        "recipe.warmup_steps=5",
        "recipe.lr=3e-3",
        f"export_dir={tmp_path / 'export'}",
    )
    manifest = train_job(cfg, tmp_path / "run", "python -m lazygen.train (test)")
    losses = json.loads((tmp_path / "run" / "losses.json").read_text())
    assert manifest["steps"] == 60 == len(losses) and (tmp_path / "export" / "tiny_mar.safetensors").is_file()
    assert _falls(losses), (losses[:WINDOW], losses[-WINDOW:])


def test_llamagen_training_runs_exports_and_loads_back(tmp_path):
    cfg = _train_cfg(
        "recipe=llamagen",
        "model=tiny_llamagen",
        "model.arch.dim=32",
        "model.arch.n_layer=1",
        "model.arch.n_head=2",
        "recipe.max_steps=40",
        "recipe.batch_size=8",
        "recipe.warmup_steps=5",
        "recipe.lr=3e-3",
        f"export_dir={tmp_path / 'export'}",
    )
    manifest = train_job(cfg, tmp_path / "run", "python -m lazygen.train recipe=llamagen (test)")
    losses = json.loads((tmp_path / "run" / "losses.json").read_text())
    assert manifest["steps"] == 40 == len(losses) and all(math.isfinite(v) for v in losses)
    assert _falls(losses), (losses[:WINDOW], losses[-WINDOW:])
    assert losses[0] == pytest.approx(math.log(16), abs=0.5)  # ~uniform over the 16 levels at the start
    weights = tmp_path / "export" / "tiny_llamagen.safetensors"
    written = json.loads((tmp_path / "export" / "tiny_llamagen.json").read_text())
    assert written["name"] == "tiny_llamagen" and written["sha256"] == sha256_of(weights)
    assert written["weights"] == "EMA" and written["recipe"]["target"] == "llamagen"
    # the export loads strictly into LlamaGen the way `python -m lazygen model=tiny_llamagen` builds it
    conf = typed_group("model", LlamaGenModelConf, cfg.model)
    conf.weights = WeightsConf(registry=None, path=str(weights))
    model = build_model(conf)
    assert isinstance(model, LlamaGen) and written["parameters"] == sum(p.numel() for p in model.parameters())
    state = read_state_dict(weights)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tokenizer_training_exports_an_autoencoder_that_tiny_mar_loads(tmp_path):
    cfg = _train_cfg(
        "recipe=tokenizer",
        "recipe.max_steps=60",
        "recipe.warmup_steps=5",
        "recipe.batch_size=16",
        f"export_dir={tmp_path / 'export'}",
    )
    manifest = train_job(cfg, tmp_path / "run", "python -m lazygen.train recipe=tokenizer (test)")
    assert _falls(json.loads((tmp_path / "run" / "losses.json").read_text()))
    assert manifest["name"] == "tiny_kl" and manifest["suggested_latent_scale"] > 0
    assert manifest["heldout_psnr_db"] > 10  # already far from a blank image after 60 steps
    # the export loads strictly as tiny_mar's tokenizer and decodes a latent grid to a 16x16 RGB image
    from lazygen.build import build_tokenizer
    from lazygen.config import ModelConf

    conf = typed_group("model", ModelConf, cfg.model)
    conf.tokenizer.path, conf.tokenizer.registry = str(tmp_path / "export" / "tiny_kl.safetensors"), None
    tokenizer = build_tokenizer(conf)
    with torch.no_grad():
        image = tokenizer.decode_tokens_latent(torch.zeros(2, 4, 16, 16))
    assert image.shape == (2, 3, 16, 16)


def test_recipe_and_model_family_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="model=tiny_llamagen"):
        train_job(_train_cfg("recipe=llamagen", "recipe.max_steps=1"), tmp_path, "x")
    with pytest.raises(ConfigError, match="recipe=llamagen"):
        train_job(_train_cfg("model=tiny_llamagen", "recipe.max_steps=1"), tmp_path, "x")


def test_evaluator_training_runs_and_the_loss_falls(tmp_path):
    cfg = _train_cfg(
        "recipe=evaluator",
        "recipe.max_steps=60",
        "recipe.warmup_steps=5",
        f"export_dir={tmp_path / 'export'}",
    )
    manifest = train_job(cfg, tmp_path / "run", "python -m lazygen.train recipe=evaluator (test)")
    assert _falls(json.loads((tmp_path / "run" / "losses.json").read_text()))
    assert (tmp_path / "export" / "digits16_reference_stats.npz").is_file()
    assert manifest["heldout_accuracy"] > 0.5


def test_bad_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="recipe.lr_schedule"):
        train_job(_train_cfg("recipe.lr_schedule=step"), tmp_path, "x")
    with pytest.raises(ConfigError, match="batch_size"):
        train_job(_train_cfg("recipe.batch_size=5000", "recipe.max_steps=1"), tmp_path, "x")
    with pytest.raises(ConfigError, match="recipe.posterior_noise"):
        train_job(_train_cfg("recipe.posterior_noise=-0.5"), tmp_path, "x")


def test_training_resumes_from_the_last_checkpoint(tmp_path):
    """A second run in the same directory continues at the saved step, with its EMA and loss history."""
    common = ("recipe=evaluator", "recipe.warmup_steps=2", "recipe.checkpoint_every=10")
    first = train_job(
        _train_cfg(*common, "recipe.max_steps=20", f"export_dir={tmp_path / 'a'}"), tmp_path, "x"
    )
    losses = json.loads((tmp_path / "losses.json").read_text())
    second = train_job(
        _train_cfg(*common, "recipe.max_steps=30", f"export_dir={tmp_path / 'b'}"), tmp_path, "x"
    )
    resumed = json.loads((tmp_path / "losses.json").read_text())
    assert first["steps"] == 20 and second["steps"] == 30
    assert len(resumed) == 30 and resumed[:20] == losses
    assert second["sha256"] != first["sha256"]  # the EMA moved on


def test_mar_loss_on_posterior_samples_follows_the_recipe_seed_not_the_global_rng():
    """``recipe.posterior=sample`` draws the autoencoder's posterior noise from the run's seeded stream, so a
    retrain is repeatable whatever else has used torch's global generator."""
    from lazygen.train import _module

    cfg = _train_cfg("recipe.posterior=sample", "recipe.batch_size=4")
    recipe = typed_group("recipe", RecipeConf, cfg.recipe)
    images, labels = load_digits16(DatasetConf(), "train")
    losses = []
    for global_seed in (1, 2):
        module, _ = _module(cfg, recipe, seed=0)
        torch.manual_seed(global_seed)  # what other code may have done to the global stream meanwhile
        losses.append(float(module.masked_loss(images[:4], labels[:4])))
    assert losses[0] == losses[1], losses


def test_mar_loss_draws_the_posterior_noise_at_the_recipe_scale(monkeypatch):
    """``recipe.posterior_noise`` scales the posterior std MAR trains on: with the same seed, the latents at
    0.5 lie exactly half as far from the posterior mean as the official (1.0) ones."""
    from lazygen.train import _module

    images, labels = load_digits16(DatasetConf(), "train")

    def offset_from_the_mean(scale: float) -> torch.Tensor:
        cfg = _train_cfg("recipe.posterior=sample", f"recipe.posterior_noise={scale}", "recipe.batch_size=4")
        module, _ = _module(cfg, typed_group("recipe", RecipeConf, cfg.recipe), seed=0)
        encode, seen = module.tokenizer.encode_to_latent, []
        monkeypatch.setattr(
            module.tokenizer, "encode_to_latent", lambda *a, **k: seen.append(encode(*a, **k)) or seen[-1]
        )
        module.masked_loss(images[:4], labels[:4])
        return seen[0] - encode(images[:4], sample=False)

    official, half = offset_from_the_mean(1.0), offset_from_the_mean(0.5)
    assert official.abs().mean() > 0.1  # the tokenizer's posterior noise is not negligible
    torch.testing.assert_close(half, 0.5 * official, rtol=0, atol=1e-5)
