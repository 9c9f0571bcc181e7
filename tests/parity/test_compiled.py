"""``hardware.compile``: the compiled transformer stacks and diffusion-head step against the official outputs."""

from __future__ import annotations

import numpy as np
import torch
from helpers import official_model, rel_err

from lazygen.lit.generation import resolved_compile_mode
from lazygen.models.mar.mar import _plain_stack
from lazygen.samplers import MARSampler, MARSamplerConf

COMPILED_REL_TOL = 1e-4  # inductor may fuse and reorder float ops; the eager path is held to 1e-5


@torch.no_grad()
def test_compiled_sample_tokens_match_the_official_code(mar_fixture, device, cpu_draws):
    """In the mode ``hardware.compile_mode=auto`` picks for the device: inductor with frozen weights on
    CPU, CUDA graphs (reduce-overhead) on GPU."""
    model = official_model(mar_fixture, device)
    model.compile_parts(resolved_compile_mode("auto", device))
    f = mar_fixture["sample_tokens"]
    for run in ("cfg3_linear_t1", "cfg1_t0.9"):
        spec = f["runs"][run]
        sampler = MARSampler(MARSamplerConf(num_iter=f["num_iter"], rng="official", **spec["kwargs"]))
        torch.manual_seed(f["seed"])
        np.random.seed(f["seed"])
        out = sampler.sample(model, f["labels"].to(device))
        assert rel_err(out, spec["out"]) < COMPILED_REL_TOL
    assert model._stack is not _plain_stack and model.diffloss.net.step != model.diffloss.net.run_step
