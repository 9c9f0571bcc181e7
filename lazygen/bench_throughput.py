"""``make bench-throughput``: seconds per image against batch size, thread count and precision, on this machine.

Each (model, threads, precision, batch) point generates one seeded batch at the model's default sampler
settings after an untimed warm-up of the same batch size at two steps (allocations, kernel selection), in
this process. Per-image time falls with the batch while the diffusion head's and the transformer's matrix
multiplies are too small to fill the cores, then flattens; the knee is where the tiny models' default
``data.batch_size`` sits. The output is one JSON line per point (and ``--out``).
"""

from __future__ import annotations

import argparse
import json

import torch

from lazygen.bench import generator_for, warm_up


def point(model: str, batch: int, threads: int, precision: str, overrides: list[str]) -> dict:
    torch.set_num_threads(threads)
    gen = generator_for(model, "none", None, "cpu", f"hardware.precision={precision}", *overrides)
    arch = gen.model.arch
    labels = torch.arange(batch) % getattr(arch, "num_classes", getattr(arch, "class_num", 1))
    seeds = list(range(batch))
    warm_up([gen], labels, seeds)
    seconds = gen.generate(labels, seeds).seconds
    return {"model": model, "batch": batch, "threads": threads, "precision": precision,
            "s_per_img": round(seconds / batch, 4), "img_per_s": round(batch / seconds, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["tiny_mar", "tiny_llamagen"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 32, 64, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--override", nargs="*", default=[], help="more overrides, e.g. sampler.num_iter=16")
    parser.add_argument("--out", default=None, help="also write the points to this JSON file")
    args = parser.parse_args()
    points = []
    for model in args.models:
        for precision in args.precisions:
            for threads in args.threads:
                for batch in args.batches:
                    points.append(point(model, batch, threads, precision, args.override))
                    print(json.dumps(points[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(points, f, indent=2)


if __name__ == "__main__":
    main()
