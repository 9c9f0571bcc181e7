"""``make bench``: FLOPs per image of MAR-B/L/H and CPU wall-clock of one configuration.

FLOPs are counted on the meta device (random weights never allocated), at 64 AR steps x 100 diffusion
steps with CFG on, the papers' setting. Wall-clock runs the real network with seeded random weights.
Speed lives here, never in timed tests.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lazygen.build import build_model, build_policy, build_sampler, build_tokenizer
from lazygen.config import CacheConf, ModelConf, SamplerConf
from lazygen.lit.generation import Generator
from lazygen.metrics.perf import measure_flops
from lazygen.models.mar.mar import MAR_PRESETS

PAPER_TFLOPS = {"mar_b": 15.49, "mar_l": 35.05, "mar_h": 69.06}  # LazyMAR Table 1, 64 steps
README_CFG = {"mar_b": 2.9, "mar_l": 3.0, "mar_h": 3.2}


def generator_for(name: str, num_iter: int, device: str) -> Generator:
    model = ModelConf(name=name, init="random", arch=MAR_PRESETS[name])
    sampler = SamplerConf(num_iter=num_iter, cfg=README_CFG[name])
    return Generator(
        build_model(model, device),
        build_tokenizer(model, device),
        build_sampler(sampler),
        build_policy(CacheConf()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MAR_PRESETS))
    parser.add_argument("--num-iter", type=int, default=64)
    parser.add_argument(
        "--latency-model", default="mar_b", help="also time one image of this model on CPU ('' to skip)"
    )
    args = parser.parse_args()
    results = {}
    for name in args.models:
        start = time.perf_counter()
        report = measure_flops(
            lambda dev, n=name: generator_for(n, args.num_iter, dev), torch.tensor([0]), [0], "meta"
        )
        results[name] = {
            "tflops_per_img": round(report.tflops_per_img, 3),
            "tflops_per_img_decoder": round(report.tflops_per_img_decoder, 3),
            "paper_tflops": PAPER_TFLOPS[name],
            "relative_to_paper": round(report.tflops_per_img / PAPER_TFLOPS[name] - 1, 4),
            "count_seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps({name: results[name]}), flush=True)
    if args.latency_model:
        gen = generator_for(args.latency_model, args.num_iter, "cpu")
        warm_up = SamplerConf(num_iter=1, cfg=README_CFG[args.latency_model], diffusion_steps=2)
        Generator(gen.model, gen.tokenizer, build_sampler(warm_up), gen.policy).generate(
            torch.tensor([0]), [0]
        )
        out = gen.generate(torch.tensor([1]), [1])
        print(json.dumps({args.latency_model: {"cpu_seconds_per_img": round(out.seconds, 2),
                                               "threads": torch.get_num_threads()}}))  # fmt: skip


if __name__ == "__main__":
    main()
