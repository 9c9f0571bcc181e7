"""``make bench``: FLOPs per image and wall-clock speedups of the cache policies, in one run.

FLOPs: MAR-B/L/H with random weights, counted on the meta device (never allocated) at 64 AR steps x 100
diffusion steps with CFG on (the papers' setting), for ``cache=none`` and each other policy, next to the
LazyMAR paper's figures. Wall-clock: for each latency model, the baseline and each policy generate the
same seeded batch alternately after one untimed warm-up each, in this process on this machine, so their
ratio is a speedup measured under equal conditions. Speed lives here, never in timed tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from hydra import compose, initialize_config_dir

from lazygen.build import build_sampler
from lazygen.cli import CONFIG_PATH
from lazygen.config import validate
from lazygen.lit.generation import Generator
from lazygen.metrics.perf import measure_flops
from lazygen.run import make_generator
from lazygen.samplers.mar import MARSamplerConf

# LazyMAR Table 1, 64 steps: TFLOPs per image of MAR and LazyMAR, and LazyMAR's speedup.
PAPER_TFLOPS = {
    "none": {"mar_b": 15.49, "mar_l": 35.05, "mar_h": 69.06},
    "lazymar": {"mar_b": 5.54, "mar_l": 12.52, "mar_h": 24.38},
}
PAPER_SPEEDUP = {"lazymar": {"mar_b": 2.80, "mar_l": 2.80, "mar_h": 2.83}}
FLOP_MODELS = ("mar_b", "mar_l", "mar_h")
WARM_UP_STEPS = 2  # AR and diffusion steps of the untimed warm-up generation


def generator_for(
    model: str, cache: str | None, num_iter: int | None, device: str, *overrides: str
) -> Generator:
    """The run a user gets from ``python -m lazygen model=<model> cache=<cache>`` (ImageNet models random)."""
    config_dir = CONFIG_PATH if not CONFIG_PATH.startswith("pkg://") else None
    if config_dir is None:  # installed wheel: the package's conf directory
        from importlib.resources import files

        config_dir = str(files("lazygen.conf"))
    init = ["model.init=random"] if model.startswith(("mar_", "llamagen_")) else []
    # a row that picks its own sampler settings (e.g. sampler=gtr) keeps its own step count
    own = num_iter is None or any(o.startswith("sampler") for o in overrides)
    steps = [] if own else [f"sampler.num_iter={num_iter}"]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        chosen = [f"cache={cache}"] if cache is not None else []  # None: the config's (or a method's) cache
        cfg = compose("config", overrides=[f"model={model}", *chosen, *steps, *init, *overrides])
    return make_generator(validate(cfg), device)


def warm_up(gens, labels: torch.Tensor, seeds: list[int]) -> None:
    """One untimed generation per generator in its own precision and compile mode, so first-call
    allocations, kernel selection and compilation stay out of the timed runs. MAR-family samplers are
    shortened to ``WARM_UP_STEPS`` AR and diffusion steps; next-token decoding runs its fixed length."""
    for gen in gens:
        if isinstance(gen.sampler.conf, MARSamplerConf):
            short = dataclasses.replace(
                gen.sampler.conf.baseline(WARM_UP_STEPS), diffusion_steps=WARM_UP_STEPS
            )
            gen = gen.with_sampler(build_sampler(short))
        gen.generate(labels, seeds)


def flop_rows(models: list[str], caches: list[str], num_iter: int, extra: list[str] = ()) -> dict:
    """FLOPs per image of each model under each cache policy, then under each ``extra`` override set."""
    rows: dict[str, dict] = {}
    for name in models:
        rows[name] = {}
        for cache in caches:
            start = time.perf_counter()
            report = measure_flops(
                lambda dev, m=name, c=cache: generator_for(m, c, num_iter, dev),
                torch.tensor([0]),
                [0],
                "meta",
            )
            row = {"tflops_per_img": round(report.tflops_per_img, 3),
                   "tflops_per_img_decoder": round(report.tflops_per_img_decoder, 3),
                   "count_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            paper = PAPER_TFLOPS.get(cache, {}).get(name)
            if paper and num_iter == 64:
                row["paper_tflops"] = paper
                row["relative_to_paper"] = round(report.tflops_per_img / paper - 1, 4)
            if cache != "none" and "none" in rows[name]:
                row["flop_speedup"] = round(rows[name]["none"]["tflops_per_img"] / report.tflops_per_img, 3)
                if num_iter == 64 and name in PAPER_SPEEDUP.get(cache, {}):
                    row["paper_speedup"] = PAPER_SPEEDUP[cache][name]
            rows[name][cache] = row
            print(json.dumps({"flops": {name: {cache: row}}}), flush=True)
        for spec in extra:  # other samplers or settings, against the first cache's row
            report = measure_flops(
                lambda dev, m=name, o=tuple(spec.split()): generator_for(m, caches[0], num_iter, dev, *o),
                torch.tensor([0]),
                [0],
                "meta",
            )
            row = {"tflops_per_img": round(report.tflops_per_img, 3),
                   "flop_speedup": round(rows[name][caches[0]]["tflops_per_img"] / report.tflops_per_img, 3)}  # fmt: skip
            rows[name][spec] = row
            print(json.dumps({"flops": {name: {spec: row}}}), flush=True)
    return rows


@dataclasses.dataclass(frozen=True)
class Where:
    """Where and how the timed rows run: the device, the batch of the ImageNet-size models (the tiny
    models take ``--batch``), and overrides every generator gets (e.g. ``hardware.precision=bf16-mixed``)."""

    device: str = "cpu"
    mar_batch: int = 1
    overrides: tuple[str, ...] = ()

    def batch_of(self, name: str, batch: int) -> int:
        return self.mar_batch if name.startswith("mar_") else batch


def latency_rows(models: list[str], caches: list[str], num_iter: int, batch: int, repeats: int,
                 where: Where = Where()) -> dict:  # fmt: skip
    """Seconds per image of each policy on one seeded batch, alternating with the baseline."""
    rows: dict[str, dict] = {}
    for name in models:
        gens = {
            cache: generator_for(name, cache, num_iter, where.device, *where.overrides) for cache in caches
        }
        base_model = gens[caches[0]].model
        for gen in gens.values():  # one network, so weights and memory are shared
            gen.model, gen.tokenizer = base_model, gens[caches[0]].tokenizer
        n = where.batch_of(name, batch)
        labels, seeds = (torch.arange(n) % base_model.arch.class_num).to(where.device), list(range(n))
        warm_up(gens.values(), labels, seeds)
        seconds = {cache: 0.0 for cache in caches}
        for _ in range(repeats):
            for cache, gen in gens.items():
                seconds[cache] += gen.generate(labels, seeds).seconds
        per_img = {cache: s / (n * repeats) for cache, s in seconds.items()}
        rows[name] = {"batch": n, "repeats": repeats, "threads": torch.get_num_threads(), "device": where.device,
                      "overrides": list(where.overrides),
                      **{f"{c}_s_per_img": round(v, 3) for c, v in per_img.items()}}  # fmt: skip
        for cache in caches[1:]:
            rows[name][f"{cache}_wall_speedup"] = round(per_img[caches[0]] / per_img[cache], 3)
        print(json.dumps({"latency": {name: rows[name]}}), flush=True)
    return rows


def method_rows(models: list[str], methods: list[str], batch: int, where: Where = Where()) -> dict:
    """Wall-clock against FLOP speedup of whole methods (``method=`` presets: sampler + cache), the first
    the baseline: FLOPs counted on the meta device, seconds from one seeded batch per method after an
    untimed two-step warm-up each, on one network. ``realised`` = wall speedup / FLOP speedup: 1.0 means the
    FLOPs saved turn fully into time saved."""
    rows: dict[str, dict] = {}
    for name in models:
        gens = {
            m: generator_for(name, None, None, where.device, f"method={m}", *where.overrides) for m in methods
        }
        base = gens[methods[0]]
        for gen in gens.values():
            gen.model, gen.tokenizer = base.model, base.tokenizer
        n = where.batch_of(name, batch)
        labels, seeds = (torch.arange(n) % base.model.arch.class_num).to(where.device), list(range(n))
        warm_up(gens.values(), labels, seeds)
        seconds = {m: gen.generate(labels, seeds).seconds / n for m, gen in gens.items()}
        flops = {
            m: measure_flops(lambda dev, m=m, name=name: generator_for(name, None, None, dev, f"method={m}"),
                             torch.tensor([0]), [0], "meta").tflops_per_img
            for m in methods
        }  # fmt: skip
        rows[name] = {"batch": n, "threads": torch.get_num_threads(), "device": where.device,
                      "overrides": list(where.overrides)}  # fmt: skip
        for m in methods:
            row = {"s_per_img": round(seconds[m], 3), "tflops_per_img": round(flops[m], 5)}
            if m != methods[0]:
                row["wall_speedup"] = round(seconds[methods[0]] / seconds[m], 3)
                row["flop_speedup"] = round(flops[methods[0]] / flops[m], 3)
                row["realised"] = round(row["wall_speedup"] / row["flop_speedup"], 3)
            rows[name][m] = row
        print(json.dumps({"methods": {name: rows[name]}}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(FLOP_MODELS), help="models whose FLOPs to count")
    parser.add_argument("--caches", nargs="+", default=["none", "lazymar"], help="first = the baseline")
    parser.add_argument("--num-iter", type=int, default=64)
    parser.add_argument("--extra", nargs="*", default=[],
                        help='more FLOP rows, each a quoted set of overrides, e.g. "sampler=gtr"')  # fmt: skip
    parser.add_argument("--latency-models", nargs="*", default=["tiny_mar", "mar_b"],
                        help="models to time on this CPU (none to skip)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=20, help="batch of tiny models")
    parser.add_argument("--mar-batch", type=int, default=1, help="batch of MAR-B/L/H")
    parser.add_argument("--device", default="cpu", help="device of the timed rows (cpu | cuda)")
    parser.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE",
                        help="overrides for every timed generator, e.g. hardware.precision=bf16-mixed hardware.compile=true")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=[],
                        help="method presets to time against the first, e.g. mar_64 lazymar_64 gtr_16")  # fmt: skip
    parser.add_argument("--method-models", nargs="*", default=["tiny_mar", "mar_b"])
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = {"num_iter": args.num_iter}
    where = Where(args.device, args.mar_batch, tuple(args.set))
    if args.methods:
        results["methods"] = method_rows(args.method_models, args.methods, args.batch, where)
    results["flops"] = flop_rows(args.models, args.caches, args.num_iter, args.extra)
    results["latency"] = latency_rows(
        args.latency_models, args.caches, args.num_iter, args.batch, args.repeats, where
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
