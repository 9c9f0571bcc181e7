"""The tiny testbed can judge quality: on the shipped tiny_mar, removing decoding steps makes FID worse,
and the samples of each class vary as much as real digits of that class. The second is a known gap of
the shipped model (a strict xfail): it reports as soon as a retrained model closes it.

Slow (500 images at 64, 8 and 4 steps on the same seeds, about 15 minutes on 2 cores): ``make test-full``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compose_cfg

from lazygen.metrics.diversity import class_diversity, diversity_ratio
from lazygen.run import NPZ_FILE, run_job

pytest.importorskip("sklearn")  # the real digits behind the diversity reference

NUM_IMAGES = 500
STEPS = (64, 8, 4)
MIN_DIVERSITY_RATIO = 0.8


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[dict, object]]:
    root = tmp_path_factory.mktemp("testbed")
    out = {}
    for steps in STEPS:
        cfg = compose_cfg("logger=none", "callbacks.progress_bar=false", f"data.num_images={NUM_IMAGES}",
                          "data.batch_size=50", f"sampler.num_iter={steps}", "metrics.flops.enabled=false",
                          "metrics.speedup.enabled=false")  # fmt: skip
        out[steps] = (run_job(cfg, root / str(steps)), root / str(steps))
    return out


@pytest.mark.slow
def test_fid_rises_as_steps_fall(runs):
    """The 8000-step tiny_mar: FID 53.3 +- 6.5 at 64 steps (N = 1000; the README's step table has the rest)."""
    fid = {steps: metrics["quality/fid"] for steps, (metrics, _) in runs.items()}
    assert fid[64] < fid[8] < fid[4], fid


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known gap: the shipped tiny_mar's samples of a class vary 0.75x (mean; min 0.71) as much as "
    "real digits at the default temperature 1.0 (testbed issue; 1.4 reaches min 0.80 at 3.4x the floor's "
    "class-matched FID, see the README); strict, so the test reports when a retrained model closes it",
)
def test_samples_of_a_class_are_as_diverse_as_real_digits(runs):
    from lazygen.data.digits16 import load_digits16, to_uint8_rgb

    real, labels = load_digits16(split="heldout")
    samples = np.load(runs[64][1] / NPZ_FILE)
    ratio = diversity_ratio(class_diversity(samples["arr_0"], samples["labels"]),
                            class_diversity(to_uint8_rgb(real).numpy(), labels.numpy()))  # fmt: skip
    assert len(ratio) == 10 and min(ratio.values()) >= MIN_DIVERSITY_RATIO, ratio


LLAMAGEN_IMAGES = 1000
MIN_LLAMAGEN_ACCURACY = 0.9


@pytest.mark.slow
def test_tiny_llamagen_draws_the_class_it_is_asked_for(tmp_path):
    """The shipped 3000-step tiny_llamagen at its defaults (the official recipe, top_p 1.0): class accuracy
    0.926 +- 0.008 and FID 67.5 at N = 1000 (about a minute on 2 cores)."""
    cfg = compose_cfg("model=tiny_llamagen", "logger=none", "callbacks.progress_bar=false",
                      f"data.num_images={LLAMAGEN_IMAGES}", "data.batch_size=50", "metrics.flops.enabled=false",
                      "metrics.speedup.enabled=false")  # fmt: skip
    metrics = run_job(cfg, tmp_path)
    assert metrics["quality/class_acc"] >= MIN_LLAMAGEN_ACCURACY, metrics["quality/class_acc"]
