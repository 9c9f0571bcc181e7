"""``python -m lazygen.audit``: does every option do something on every shipped model?

Each cache policy and each accelerating sampler is composed, at its defaults, with each shipped model (tiny
and ImageNet sizes; random weights on the meta device, nothing allocated) and set against that model's
baseline (``cache=none`` with the model's own sampler). An option passes when it

- changes the work (FLOPs per image), the memory (KV-cache bytes per image) or, on causal models, the
  sequential forward passes per image by more than ``TOLERANCE``;
- has value-dependent work (SJD: the passes depend on the accepted drafts), which the meta device cannot
  count: it is listed as such and measured on real runs;
- is refused with a :class:`~lazygen.errors.ConfigError` that says why (a MAR-only policy on LlamaGen);
- warns (:class:`~lazygen.errors.ConfigWarning`) that it is capped or does nothing, naming the key; or
- is declared to change something other than work or memory: a sampler or policy whose class sets
  ``same_work_reason`` (Halton changes only the reveal order).

Anything else is a size-dependent default that silently does nothing, which is what this audit exists to
catch (ADSA's absolute budget of 384 on tiny_llamagen's 256 tokens was one). LlamaGen FLOPs are counted
with one and two layers and extended to the model's depth (exact, see ``bench_llamagen``).
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lazygen.bench import generator_for
from lazygen.bench_llamagen import generator_kv_bytes, layer_extrapolated_flops
from lazygen.errors import ConfigError, ConfigWarning
from lazygen.lit.generation import Generator
from lazygen.metrics.hints import hints_for
from lazygen.metrics.perf import measure_flops

TOLERANCE = 0.01  # a relative change in FLOPs or KV bytes below this counts as none
KV_DTYPE = torch.bfloat16  # the LlamaGen sampler's inference dtype, as bench_llamagen counts it
OPTIONS = ("cache=lazymar", "cache=adsa", "sampler=steps", "sampler=halton", "sampler=gtr", "sampler=disa",
           "sampler=sjd", "sampler=zipar")  # fmt: skip
TINY_MODELS = ("tiny_mar", "tiny_llamagen")
VALUE_DEPENDENT = ("its forward passes depend on which drafts are accepted, so it is measured on real runs "
                   "(python -m lazygen.bench_parallel; sampler/accept_rate in every run)")  # fmt: skip
BASELINE = "baseline"


def shipped_models() -> list[str]:
    """Every model config group option (conf/model/*.yaml)."""
    conf = Path(__file__).resolve().parent.parent / "conf" / "model"
    if not conf.is_dir():  # installed wheel: the package's conf directory
        from importlib.resources import files

        conf = Path(str(files("lazygen.conf"))) / "model"
    return sorted(p.stem for p in conf.glob("*.yaml"))


@dataclass
class AuditRow:
    model: str
    option: str
    verdict: str  # baseline | changes | refused | warned | declared | NO EFFECT
    tflops_per_img: float | None = None
    kv_bytes_per_img: int | None = None
    flop_ratio: float | None = None  # option / baseline
    kv_ratio: float | None = None
    model_calls_per_img: int | None = None  # causal models: sequential forward passes
    calls_ratio: float | None = None
    note: str = ""


def _overrides(option: str) -> tuple[str, tuple[str, ...]]:
    """(cache, extra overrides) of an option or of the baseline."""
    if option == BASELINE:
        return "none", ()
    cache, extra = "none", []
    for override in option.split():  # e.g. "sampler=steps sampler.num_iter=64"
        if override.startswith("cache="):
            cache = override.split("=", 1)[1]
        else:
            extra.append(override)
    return cache, tuple(extra)


def _compose(model: str, option: str) -> tuple[Generator, list[str]]:
    """The meta-device generator a user gets, and the ConfigWarnings composing it raised."""
    cache, extra = _overrides(option)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        gen = generator_for(model, cache, None, "meta", *extra)
    return gen, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def _cost(model: str, option: str, gen: Generator) -> tuple[float, int | None, int | None]:
    """(TFLOPs per image, KV bytes per image, forward passes per image); the last two are None for a model
    without a KV cache."""
    cache, extra = _overrides(option)
    if hasattr(gen.model, "new_caches"):  # a causal model: KV caches, equal layers
        from lazygen.bench_parallel import static_calls

        tflops, _ = layer_extrapolated_flops(model, cache, extra)
        return tflops, generator_kv_bytes(gen, 1, KV_DTYPE), static_calls(model, cache, extra)
    report = measure_flops(
        lambda dev: generator_for(model, cache, None, dev, *extra), torch.tensor([0]), [0], "meta"
    )
    return report.tflops_per_img, None, None


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else round(value / base, 4)


def _declared(gen: Generator) -> str:
    """The reason a component gives for leaving work and memory alone, if it gives one."""
    for part in (gen.sampler, gen.policy):
        reason = getattr(type(part), "same_work_reason", None)
        if reason:
            return reason
    return ""


def audit_model(model: str, options: tuple[str, ...] = OPTIONS, costs: bool = True) -> list[AuditRow]:
    """The baseline row of ``model`` and one row per option. ``costs=False`` skips FLOP counting (and the
    rows that would need it keep verdict 'unmeasured'), for a check of refusals and warnings alone."""
    gen, _ = _compose(model, BASELINE)
    base = AuditRow(model, BASELINE, BASELINE)
    if costs:
        base.tflops_per_img, base.kv_bytes_per_img, base.model_calls_per_img = _cost(model, BASELINE, gen)
    rows = [base]
    for option in options:
        try:
            gen, advice = _compose(model, option)
        except ConfigError as exc:
            rows.append(AuditRow(model, option, "refused", note=str(exc)))
            continue
        row = AuditRow(model, option, "unmeasured", note=" ".join(advice))
        if not hints_for(gen.sampler).static_shapes:  # no meta-device count: its work depends on values
            row.verdict, row.note = "value-dependent", VALUE_DEPENDENT
            rows.append(row)
            continue
        if costs:
            row.tflops_per_img, row.kv_bytes_per_img, row.model_calls_per_img = _cost(model, option, gen)
            row.flop_ratio = _ratio(row.tflops_per_img, base.tflops_per_img)
            row.kv_ratio = _ratio(row.kv_bytes_per_img, base.kv_bytes_per_img)
            row.calls_ratio = _ratio(row.model_calls_per_img, base.model_calls_per_img)
        ratios = (row.flop_ratio, row.kv_ratio, row.calls_ratio)
        changed = any(r is not None and abs(r - 1) > TOLERANCE for r in ratios)
        if advice:
            row.verdict = "warned"
        elif changed:
            row.verdict = "changes"
        elif _declared(gen):
            row.verdict, row.note = "declared", _declared(gen)
        elif costs:
            row.verdict = "NO EFFECT"
        rows.append(row)
    return rows


def markdown(rows: list[AuditRow]) -> str:
    """The audit as a table: FLOPs and KV bytes against each model's baseline, and why where unchanged."""
    lines = ["| model | option | verdict | TFLOPs / image | × baseline | KV MiB / image | × baseline | passes / image "
             "| × baseline | why |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        flops = "" if r.tflops_per_img is None else f"{r.tflops_per_img:.4g}"
        kv = "" if r.kv_bytes_per_img is None else f"{r.kv_bytes_per_img / 2**20:.3f}"
        why = r.note.split(". ")[0].rstrip(".") if r.verdict not in ("changes", BASELINE) else ""
        calls = "" if r.model_calls_per_img is None else str(r.model_calls_per_img)
        lines.append(f"| {r.model} | {r.option} | {r.verdict} | {flops} | {r.flop_ratio or ''} | {kv} | "
                     f"{r.kv_ratio or ''} | {calls} | {r.calls_ratio or ''} | {why} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=None, help="model config names (default: all shipped)")
    parser.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows: list[AuditRow] = []
    for model in args.models or shipped_models():
        rows += audit_model(model)
        print(f"audited {model}", flush=True)
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    failed = [f"{r.model} {r.option}" for r in rows if r.verdict == "NO EFFECT"]
    if failed:
        raise SystemExit(f"options with no effect and no warning: {', '.join(failed)}")


if __name__ == "__main__":
    main()
