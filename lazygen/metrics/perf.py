"""Latency from the writer's batch records, and FLOPs per image from a counting pass.

FLOPs are counted with ``FlopCounterMode`` (2 x MACs, CFG doubling and the diffusion head included). For
samplers and policies whose work does not depend on tensor values the pass runs on the meta device: exact,
and instant even for MAR-H. Otherwise (SJD: the passes depend on the accepted drafts) it runs one real
batch of ``metrics.flops.num_images`` images and counts what that batch did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lazygen.lit.generation import Generator
from lazygen.metrics.flops import count_flops
from lazygen.metrics.hints import hints_for
from lazygen.models.mar.diffloss import DiffLoss, FinalLayer, ResBlock, SimpleMLPAdaLN
from lazygen.models.mar.transformer import Attention, Block, Mlp

# Methods whose meta-device calls are memoised by input shapes while counting (see ``shape_memo``).
MEMOISED_METHODS: tuple[tuple[type[nn.Module], str], ...] = (
    (Block, "forward"),
    (Attention, "attend"),  # blocks run with cache hooks are not memoised, but their parts are
    (Mlp, "forward"),
    (nn.Linear, "forward"),
    (nn.LayerNorm, "forward"),  # no FLOPs of its own, but ~3 ms per meta call (a Python decomposition)
    (SimpleMLPAdaLN, "forward"),
    (ResBlock, "apply"),  # the diffusion head's per-step blocks: 100 steps of one chain share their shapes
    (FinalLayer, "apply"),
    (DiffLoss, "sample"),
)
# Keyword arguments that make a call's work depend on more than shapes (cache hooks): calls that set
# them are always run.
HOOK_ARGUMENTS = ("kv", "select", "block_fn")
# Of those, methods whose FLOPs are exactly affine in the rows of the first tensor argument (per-row work plus
# a per-call part, e.g. a chain's time embeddings): two counts serve every row count (the diffusion chain
# runs once per token count).
ROW_AFFINE_METHODS: tuple[tuple[type[nn.Module], str], ...] = ((DiffLoss, "sample"),)

TERA = 1e12


def latency_metrics(records: list[dict]) -> dict[str, float]:
    """Seconds per image and images per second over all ranks.

    Each rank's first batch is a warm-up and is left out when the rank ran more than one batch.
    Throughput divides all images by the busiest rank's time (ranks run in parallel).
    """
    by_rank: dict[int, list[dict]] = {}
    for r in records:
        by_rank.setdefault(int(r["rank"]), []).append(r)
    seconds = images = 0.0
    busiest = 0.0
    total_images = 0
    for rank_records in by_rank.values():
        timed = rank_records[1:] if len(rank_records) > 1 else rank_records
        seconds += sum(r["seconds"] for r in timed)
        images += sum(len(r["indices"]) for r in timed)
        busiest = max(busiest, sum(r["seconds"] for r in rank_records))
        total_images += sum(len(r["indices"]) for r in rank_records)
    if not images:
        return {}
    return {
        "perf/latency_s_per_img": seconds / images,
        "perf/throughput_img_per_s": total_images / busiest if busiest else 0.0,
    }


def _active_counter() -> FlopCounterMode | None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    for mode in _get_current_dispatch_mode_stack():
        counter = getattr(mode, "counter", mode)  # FlopCounterMode pushes a private mode holding it
        if isinstance(counter, FlopCounterMode):
            return counter
    return None


def _snapshot(counter: FlopCounterMode) -> dict[str, dict]:
    return {mod: dict(ops) for mod, ops in counter.flop_counts.items()}


def _arg_key(arg: object) -> object:
    """How a non-tensor argument enters a memo key: its ``flop_key`` if it has one, else its type."""
    return getattr(arg, "flop_key", None) or type(arg).__name__


# One counted call: its rows, output shape and dtype, and its FLOPs {module: {op: flops}}.
_Sample = tuple[int, torch.Size, torch.dtype, dict[str, dict]]


def _replayed(samples: list[_Sample], rows: int) -> tuple[tuple, torch.dtype, dict[str, dict]] | None:
    """A call's output shape, dtype and FLOPs at ``rows`` from earlier counts of the same call: the count
    at these rows, else the line through two counts at other rows (output rows scale with the rows); None
    when it must be counted."""
    for r, shape, dtype, delta in samples:
        if r == rows:
            return tuple(shape), dtype, delta
    if len(samples) < 2:
        return None
    (r1, shape, dtype, d1), (r2, _, _, d2) = samples[:2]
    delta = {}
    for mod in {*d1, *d2}:
        ops1, ops2 = d1.get(mod, {}), d2.get(mod, {})
        delta[mod] = {op: ops1.get(op, 0) + (ops2.get(op, 0) - ops1.get(op, 0)) * (rows - r1) // (r2 - r1)
                      for op in {*ops1, *ops2}}  # fmt: skip
    return (shape[0] * rows // r1, *shape[1:]), dtype, delta


@contextlib.contextmanager
def shape_memo(
    root: nn.Module,
    methods: tuple[tuple[type[nn.Module], str], ...] = MEMOISED_METHODS,
    row_affine_objects: Sequence[tuple[object, str]] = (),
) -> Iterator[None]:
    """On the meta device, count each (module, input shapes) once and replay the count afterwards.

    A meta-device op costs about a millisecond under the counter, and MAR calls its diffusion head
    thousands of times with identical shapes; since a meta forward has no values, a repeated call only
    needs its output shape and its FLOPs. Exact for modules whose work depends on shapes alone. Calls are
    shared between modules of the same class and parameter shapes (the blocks of a stack). Non-tensor
    arguments enter the key by type, or by their ``flop_key`` when their value changes the work (the
    number of diffusion steps). ``row_affine_objects`` adds (object, method) pairs of other objects (a
    cache policy's diffusion head) whose work is affine in the rows of their first tensor argument: counted
    at two row counts, interpolated for the others.
    """
    memo: dict[tuple, list[_Sample]] = {}
    originals: list[tuple[nn.Module, str, Callable]] = []

    components = {m: name.split(".")[0] for name, m in root.named_modules()}

    def wrap(module: object, forward: Callable, row_affine: bool) -> Callable:
        # modules of one class with equal parameter shapes in one part of the model (the blocks of a
        # stack) do equal work; their counts replay under the first one's names, which agree up to the
        # part (``MAR.decoder_blocks``), the depth FLOP reports keep
        params = module.named_parameters() if isinstance(module, nn.Module) else ()
        identity = (type(module), components.get(module), tuple((n, tuple(p.shape)) for n, p in params))

        def memoised(*args, **kwargs):
            counter = _active_counter()
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            hooked = any(kwargs.get(name) is not None for name in HOOK_ARGUMENTS)
            if counter is None or hooked or any(t.device.type != "meta" for t in tensors):
                return forward(*args, **kwargs)
            rows = tensors[0].shape[0] if row_affine else 1
            # row-affine: row counts enter the key as multiples of the first tensor's rows
            shapes = tuple(
                ((t.shape[0] / rows, *t.shape[1:]) if row_affine and t.ndim > 1 else tuple(t.shape), t.dtype)
                for t in tensors
            )
            others = tuple(_arg_key(a) for a in (*args, *kwargs.values()) if not isinstance(a, torch.Tensor))
            samples = memo.setdefault((identity, forward.__name__, shapes, others), [])
            replay = _replayed(samples, rows)
            if replay is not None:
                shape, dtype, delta = replay
                for mod, ops in delta.items():
                    for op, flops in ops.items():
                        counter.flop_counts[mod][op] += flops
                return torch.empty(shape, dtype=dtype, device="meta")
            before = _snapshot(counter)
            out = forward(*args, **kwargs)
            after = _snapshot(counter)
            delta = {
                mod: {op: n - before.get(mod, {}).get(op, 0) for op, n in ops.items()}
                for mod, ops in after.items()
            }
            samples.append((rows, out.shape, out.dtype, delta))
            return out

        return memoised

    for module in root.modules():
        for cls, name in methods:
            if isinstance(module, cls):
                originals.append((module, name, getattr(module, name)))
                linear = any(isinstance(module, c) and name == n for c, n in ROW_AFFINE_METHODS)
                setattr(module, name, wrap(module, getattr(module, name), linear))
    for obj, name in row_affine_objects:
        originals.append((obj, name, getattr(obj, name)))
        setattr(obj, name, wrap(obj, getattr(obj, name), True))
    try:
        yield
    finally:
        for module, name, _ in originals:
            delattr(module, name)  # drop the instance attribute: the class method shows through again


@dataclass
class FlopReport:
    tflops_per_img: float
    tflops_per_img_decoder: float
    by_module: dict[str, float]
    device: str


def measure_flops(
    make_generator: Callable[[str], Generator], labels: torch.Tensor, seeds: list[int], mode: str
) -> FlopReport:
    """FLOPs per image of sampling (transformer + diffusion head) and of decoding, counted separately."""
    gen_probe = make_generator("meta") if mode in ("auto", "meta") else None
    static = (
        gen_probe is not None
        and hints_for(gen_probe.policy).static_shapes
        and hints_for(gen_probe.sampler).static_shapes
    )
    if gen_probe is not None and (mode == "meta" or static):
        generator, device = gen_probe, "meta"
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        generator = make_generator(device)
    labels = labels.to(device)
    n = labels.shape[0]
    generator.policy.reset(n)
    policy = generator.policy
    with shape_memo(generator.model, row_affine_objects=[(policy, m) for m in hints_for(policy).row_affine]):
        sampled = count_flops(
            lambda: generator.sampler.sample(generator.model, labels, seeds, generator.policy),
            roots={type(generator.model).__name__: generator.model},
        )
    decoded = count_flops(
        lambda: generator.tokenizer.decode_tokens_latent(sampled.output),
        roots={type(generator.tokenizer).__name__: generator.tokenizer},
    )
    by_module = {k: v / n / TERA for k, v in {**sampled.by_module, **decoded.by_module}.items()}
    return FlopReport(
        tflops_per_img=(sampled.total + decoded.total) / n / TERA,
        tflops_per_img_decoder=decoded.total / n / TERA,
        by_module=by_module,
        device=device,
    )
