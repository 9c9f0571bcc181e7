"""``python -m lazygen.bench_parallel``: parallel decoding (SJD, ZipAR) next to ADSA, one process.

Two parts, the same six rows (ar, sjd, zipar, adsa, sjd + adsa, zipar + adsa, each at its defaults):

- **Large model, random weights** (default LlamaGen-XL, 576 tokens, CFG): sequential forward passes per
  image, FLOPs per image (the VQ decoder included) and KV bytes per image (bf16). ar, ZipAR and ADSA do the
  same work whatever the weights, so they are counted on the meta device with one and two layers and
  extended to the depth (exact). SJD's passes depend on which drafts are accepted, so it runs for real on
  the CPU (``--sjd-images`` images) under the FLOP counter: a real count of those images. Random weights
  give nearly uniform next-token distributions, against which uniformly drawn drafts are accepted far
  more often than against a trained model's; the SJD row shows the mechanism's cost, not its speed-up.
- **tiny_llamagen wall-clock** (shipped weights, CPU): every row generates the same seeded batch, rows
  alternating after one untimed warm-up each, so the ratios to ar are measured under equal conditions.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lazygen.bench import generator_for
from lazygen.bench_llamagen import DTYPES, alternating_seconds, generator_kv_bytes, layer_extrapolated_flops
from lazygen.metrics.perf import measure_flops

ROWS: dict[str, tuple[str, tuple[str, ...]]] = {  # row: (cache, overrides)
    "ar": ("none", ()),
    "sjd": ("none", ("sampler=sjd",)),
    "zipar": ("none", ("sampler=zipar",)),
    "adsa": ("adsa", ()),
    "sjd+adsa": ("adsa", ("sampler=sjd",)),
    "zipar+adsa": ("adsa", ("sampler=zipar",)),
}


def static_calls(model_name: str, cache: str, extra: tuple[str, ...]) -> int:
    """Forward passes of one generation, from a one-layer meta-device run (shapes only)."""
    gen = generator_for(model_name, cache, None, "meta", *extra, "model.arch.n_layer=1")
    gen.policy.reset(1)
    gen.sampler.sample(gen.model, torch.tensor([0], device="meta"), [0], gen.policy)
    return gen.policy.stats.model_calls


def sjd_real(model_name: str, cache: str, extra: tuple[str, ...], images: int) -> tuple[float, float, float]:
    """(TFLOPs per image, VQ decoder TFLOPs per image, passes per image) of a real CPU run under the counter."""
    holder = {}

    def make(dev: str):
        holder["gen"] = generator_for(model_name, cache, None, "cpu", *extra)
        return holder["gen"]

    labels = torch.arange(images) % 1000
    report = measure_flops(make, labels, list(range(images)), "real")
    return report.tflops_per_img, report.tflops_per_img_decoder, float(holder["gen"].policy.stats.model_calls)


def large_model_rows(model_name: str, dtype: str, sjd_images: int, rows: list[str]) -> dict:
    out = {}
    for name in rows:
        cache, extra = ROWS[name]
        start = time.perf_counter()
        gen = generator_for(model_name, cache, None, "meta", *extra)
        row = {"kv_bytes_per_img": generator_kv_bytes(gen, 1, DTYPES[dtype])}
        if gen.sampler.name == "sjd":
            if sjd_images <= 0:
                continue
            tflops, decoder, calls = sjd_real(model_name, cache, extra, sjd_images)
            row.update(flops="real count", sjd_images=sjd_images)
        else:
            tflops, decoder = layer_extrapolated_flops(model_name, cache, extra)
            calls = static_calls(model_name, cache, extra)
            row["flops"] = "exact (meta device)"
        row.update(model_calls_per_img=calls, tflops_per_img=round(tflops, 4),
                   tflops_per_img_decoder=round(decoder, 4), seconds=round(time.perf_counter() - start, 1))  # fmt: skip
        out[name] = row
        print(json.dumps({"large": {model_name: {name: row}}}), flush=True)
    return out


def wall_clock_rows(model_name: str, batch: int, repeats: int, rows: list[str]) -> dict:
    gens = {name: generator_for(model_name, ROWS[name][0], None, "cpu", *ROWS[name][1]) for name in rows}
    per_img, last = alternating_seconds(gens, batch, repeats, warm_up=2)
    calls = {name: out.cache.model_calls for name, out in last.items()}
    first = next(iter(per_img))
    row = {"batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
           **{f"{k}_s_per_img": round(v, 4) for k, v in per_img.items()},
           **{f"{k}_wall_speedup": round(per_img[first] / v, 3) for k, v in per_img.items()},
           **{f"{k}_model_calls": n for k, n in calls.items()}}  # fmt: skip
    print(json.dumps({"wall_clock": {model_name: row}}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llamagen_xl", help="large model, random weights ('' skips)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="KV-cache dtype counted")
    parser.add_argument("--sjd-images", type=int, default=1, help="real CPU images for SJD's count (0 skips)")
    parser.add_argument(
        "--latency-model", default="tiny_llamagen", help="model to time on this CPU ('' skips)"
    )
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = {}
    if args.model:
        results["large"] = {args.model: large_model_rows(args.model, args.dtype, args.sjd_images, args.rows)}
    if args.latency_model:
        results["wall_clock"] = {
            args.latency_model: wall_clock_rows(args.latency_model, args.batch, args.repeats, args.rows)
        }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
