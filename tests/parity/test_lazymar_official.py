"""``cache=lazymar`` against the official LazyMAR code (feihongyan1/LazyMAR) on a tiny random MAR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import official_model, rel_err

from lazygen.cache import NoCache
from lazygen.cache.lazymar import LazyMARConf, LazyMARPolicy
from lazygen.models.mar import MAR
from lazygen.samplers import MARSampler, MARSamplerConf

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def model(lazymar_fixture, device) -> MAR:
    return official_model(lazymar_fixture, device)


def official_run(fixture: dict, model: MAR, policy) -> torch.Tensor:
    sampler = MARSampler(
        MARSamplerConf(
            num_iter=fixture["num_iter"],
            cfg=fixture["cfg"],
            cfg_schedule=fixture["cfg_schedule"],
            temperature=fixture["temperature"],
            rng="official",
        )  # fmt: skip
    )
    torch.manual_seed(fixture["seed"])
    np.random.seed(fixture["seed"])
    return sampler.sample(model, fixture["labels"].to(next(model.parameters()).device), policy=policy)


def test_no_cache_reproduces_official_mar(lazymar_fixture, model, cpu_draws):
    out = official_run(lazymar_fixture, model, NoCache())
    assert rel_err(out, lazymar_fixture["mar_sample"]) < REL_TOL
    assert rel_err(out, lazymar_fixture["lazymar_off_sample"]) < REL_TOL


def test_lazymar_reproduces_official_lazymar(lazymar_fixture, model, cpu_draws):
    out = official_run(lazymar_fixture, model, LazyMARPolicy(LazyMARConf()))
    target = lazymar_fixture["lazymar_sample"]
    assert rel_err(out, target) < REL_TOL
    # and the caches really changed the result: it is not the baseline
    assert rel_err(target, lazymar_fixture["mar_sample"]) > 100 * REL_TOL
