"""``make bench`` (LlamaGen part): KV-cache memory, FLOPs and CPU wall-clock of ADSA against the full cache.

Memory and FLOPs: a LlamaGen (random weights, meta device: nothing is allocated) at its full context and
at each ADSA budget. KV bytes are those of the caches a generation allocates, per image with CFG (two rows)
in the model's inference dtype (bf16 by default, as the official sampler), and for a batch. FLOPs per image
are counted on the meta device over the whole generation (prefill, every decode step, the VQ decoder),
with one and two layers, extended linearly to the model's depth (exact: every layer does the same work).
Wall-clock: tiny_llamagen generates the same seeded batch with the full cache and with each budget,
alternately after one untimed warm-up each, in this process: the ratios are measured under equal conditions.
Throughput at a fixed KV-memory budget (``--memory-mib``): each variant generates the largest batch whose
caches fit the budget, the same way, so a bounded cache's saving shows up as images per second.
"""

from __future__ import annotations

import argparse
import json

import torch

from lazygen.bench import generator_for
from lazygen.errors import ConfigError
from lazygen.lit.generation import Generator
from lazygen.metrics.perf import measure_flops

MIB = 2**20
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def variant(budget: int | None, rank_every: int = 1) -> tuple[str, tuple[str, ...]]:
    """(cache, overrides) of the full cache (budget None) or ADSA at a budget and ranking cadence."""
    if budget is None:
        return "none", ()
    return "adsa", (f"cache.budget={budget}", f"cache.rank_every={rank_every}")


def variant_key(budget: int | None, rank_every: int = 1) -> str:
    """full, adsa384, adsa384-r8: the names of the result rows."""
    if budget is None:
        return "full"
    return f"adsa{budget}" + (f"-r{rank_every}" if rank_every > 1 else "")


def variants(budgets: list[int], cadences: list[int]) -> list[tuple[int | None, int]]:
    """The full cache, then every budget at every ranking cadence."""
    return [(None, 1)] + [(b, r) for b in budgets for r in cadences]


def kv_bytes(model_name: str, budget: int | None, batch: int, dtype: torch.dtype, rank_every: int = 1) -> int:
    """Bytes of the KV caches one generation of ``batch`` images (CFG: 2 rows each) allocates (the per-step
    ranking's bookkeeping included: it depends on the cadence)."""
    cache, extra = variant(budget, rank_every)
    return generator_kv_bytes(generator_for(model_name, cache, None, "meta", *extra), batch, dtype)


def generator_kv_bytes(gen: Generator, batch: int, dtype: torch.dtype) -> int:
    """Bytes of the KV caches ``gen`` (built on the meta device) allocates for ``batch`` images."""
    model = gen.model.to(dtype)
    rows = 2 * batch if gen.sampler.conf.cfg != 1.0 else batch
    gen.policy.reset(batch)
    caches = gen.policy.kv_caches(model, rows, torch.device("meta"))
    return sum(c.nbytes for c in caches)


def layer_extrapolated_flops(model_name: str, cache: str, extra: tuple[str, ...]) -> tuple[float, float]:
    """TFLOPs per image (total, VQ decoder), counted on the meta device with 1 and 2 layers and extended
    linearly to the model's depth: its layers have equal shapes and see the same cache lengths, so the
    count is exact, and a 36-layer x 577-step meta run (tens of minutes under the counter) is avoided."""
    counts = []
    for layers in (1, 2):
        report = measure_flops(
            lambda dev, n=layers: generator_for(
                model_name, cache, None, dev, *extra, f"model.arch.n_layer={n}"
            ),
            torch.tensor([0]),
            [0],
            "meta",
        )
        counts.append(report)
    depth = generator_for(model_name, cache, None, "meta", *extra).model.arch.n_layer
    per_layer = counts[1].tflops_per_img - counts[0].tflops_per_img
    return counts[0].tflops_per_img + (depth - 1) * per_layer, counts[0].tflops_per_img_decoder


def memory_flop_rows(
    model_name: str, budgets: list[int], cadences: list[int], batch: int, dtype: str, flops: bool
) -> dict:
    rows: dict[str, dict] = {}
    full = None
    for budget, rank_every in variants(budgets, cadences):
        key = variant_key(budget, rank_every)
        cache, extra = variant(budget, rank_every)
        per_img = kv_bytes(model_name, budget, 1, DTYPES[dtype], rank_every)  # linear in the rows
        row = {"kv_bytes_per_img": per_img, "kv_mib_per_img": round(per_img / MIB, 3),
               f"kv_gib_batch{batch}": round(per_img * batch / 2**30, 3)}  # fmt: skip
        if flops:
            total, decoder = layer_extrapolated_flops(model_name, cache, extra)
            row["tflops_per_img"] = round(total, 4)
            row["tflops_per_img_decoder"] = round(decoder, 4)
        if full is not None:
            row["kv_saving"] = round(1 - per_img / full["kv_bytes_per_img"], 4)
            if flops:
                row["flop_speedup"] = round(full["tflops_per_img"] / row["tflops_per_img"], 4)
        full = full or row
        rows[key] = row
        print(json.dumps({"memory_flops": {model_name: {key: row}}}), flush=True)
    return rows


def alternating_seconds(gens: dict, batch: int | dict, repeats: int, warm_up: int = 1) -> tuple[dict, dict]:
    """Seconds per image of each generator on one seeded batch, the generators taking turns after one
    untimed warm-up each on ``warm_up`` images, all on the first one's network (equal conditions).
    ``batch`` may give each key its own batch size (the first images of one seeded sequence).
    Returns (seconds per image, the last generation's output) by key."""
    base = next(iter(gens.values()))
    for gen in gens.values():  # one network
        gen.model, gen.tokenizer = base.model, base.tokenizer
    sizes = batch if isinstance(batch, dict) else dict.fromkeys(gens, batch)
    labels = torch.arange(max(sizes.values())) % base.model.arch.num_classes
    seeds = list(range(len(labels)))
    for gen in gens.values():  # untimed warm-up
        gen.generate(labels[:warm_up], seeds[:warm_up])
    seconds, last = dict.fromkeys(gens, 0.0), {}
    for _ in range(repeats):
        for key, gen in gens.items():
            last[key] = gen.generate(labels[: sizes[key]], seeds[: sizes[key]])
            seconds[key] += last[key].seconds
    return {k: s / (sizes[k] * repeats) for k, s in seconds.items()}, last


def latency_rows(model_name: str, budgets: list[int], cadences: list[int], batch: int, repeats: int) -> dict:
    """Seconds per image with the full cache and each budget and cadence, alternating on one seeded batch."""
    gens = {}
    for budget, every in variants(budgets, cadences):
        cache, extra = variant(budget, every)
        gens[variant_key(budget, every)] = generator_for(model_name, cache, None, "cpu", *extra)
    per_img, _ = alternating_seconds(gens, batch, repeats)
    row = {"batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
           **{f"{k}_s_per_img": round(v, 4) for k, v in per_img.items()}}  # fmt: skip
    for key in gens:
        if key != "full":
            row[f"{key}_wall_speedup"] = round(per_img["full"] / per_img[key], 3)
    print(json.dumps({"latency": {model_name: row}}), flush=True)
    return row


def fixed_memory_rows(model_name: str, budgets: list[int], rank_every: int, memory_mib: float,
                      repeats: int) -> dict:  # fmt: skip
    """Throughput at a fixed KV-memory budget: each variant generates the largest batch whose KV caches
    (fp32, the CPU run's dtype) fit in ``memory_mib``, the variants taking turns on one seeded sequence.
    This is where a bounded cache pays: a smaller cache per image lets more images share the memory."""
    gens, batches, per_img = {}, {}, {}
    for budget, every in variants(budgets, [rank_every]):
        key = variant_key(budget, every)
        cache, extra = variant(budget, every)
        meta = generator_for(model_name, cache, None, "meta", *extra)
        per_img[key] = generator_kv_bytes(meta, 1, torch.float32)
        batches[key] = int(memory_mib * MIB // per_img[key])
        if batches[key] < 1:
            raise ConfigError(f"--memory-mib {memory_mib} holds no image of {key} ({per_img[key] / MIB:.2f} MiB "
                              "per image); give at least that much.")  # fmt: skip
        gens[key] = generator_for(model_name, cache, None, "cpu", *extra)
    s_per_img, _ = alternating_seconds(gens, batches, repeats)
    row = {"memory_mib": memory_mib, "repeats": repeats, "threads": torch.get_num_threads()}
    for key in gens:
        row[f"{key}_kv_mib_per_img"] = round(per_img[key] / MIB, 3)
        row[f"{key}_batch"] = batches[key]
        row[f"{key}_img_per_s"] = round(1 / s_per_img[key], 3)
        if key != "full":
            row[f"{key}_throughput_gain"] = round(s_per_img["full"] / s_per_img[key], 3)
    print(json.dumps({"fixed_memory": {model_name: row}}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", default="llamagen_xl", help="model for KV memory and FLOPs (random weights)"
    )
    parser.add_argument("--budgets", nargs="*", type=int, default=[384, 256])
    parser.add_argument("--batch", type=int, default=32, help="images of the batch whose KV memory is shown")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--no-flops", action="store_true", help="skip the (slow) FLOP count")
    parser.add_argument(
        "--latency-model", default="tiny_llamagen", help="model to time on this CPU ('' skips)"
    )
    parser.add_argument("--latency-budgets", nargs="*", type=int, default=[128, 96])
    parser.add_argument(
        "--rank-every", nargs="*", type=int, default=[1, 8], help="ADSA ranking cadences (1: the paper)"
    )
    parser.add_argument("--latency-batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--memory-mib",
        type=float,
        default=None,
        help="also measure throughput when every variant fills this much KV memory (the batch that fits)",
    )
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = {
        "memory_flops": {
            args.model: memory_flop_rows(
                args.model, args.budgets, args.rank_every, args.batch, args.dtype, not args.no_flops
            )
        }
    }
    if args.latency_model and args.memory_mib is not None:
        try:
            row = fixed_memory_rows(
                args.latency_model, args.latency_budgets, args.rank_every[0], args.memory_mib, args.repeats
            )
        except ConfigError as err:
            parser.error(str(err))
        results["fixed_memory"] = {args.latency_model: row}
    if args.latency_model:
        results["latency"] = {
            args.latency_model: latency_rows(
                args.latency_model, args.latency_budgets, args.rank_every, args.latency_batch, args.repeats
            )
        }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
