"""lazygen.audit: every option changes work or memory on every shipped model, or is refused or warned."""

from __future__ import annotations

import pytest
import torch

from lazygen.audit import BASELINE, KV_DTYPE, OPTIONS, audit_model, shipped_models
from lazygen.bench import generator_for
from lazygen.bench_llamagen import generator_kv_bytes

ADSA_SHARE_BOUND = 0.75  # the default budget keeps 2/3 of the image tokens: its KV bytes must fall below this


def by_option(rows) -> dict:
    return {r.option: r for r in rows}


def test_the_tiny_models_pass_the_audit_with_measured_savings() -> None:
    mar, llamagen = by_option(audit_model("tiny_mar")), by_option(audit_model("tiny_llamagen"))
    for rows in (mar, llamagen):
        assert set(rows) == {BASELINE, *OPTIONS}
        assert "NO EFFECT" not in {r.verdict for r in rows.values()}
    assert mar["cache=lazymar"].verdict == "changes" and mar["cache=lazymar"].flop_ratio < 0.6
    for sampler in ("steps", "gtr", "disa"):
        assert mar[f"sampler={sampler}"].verdict == "changes" and mar[f"sampler={sampler}"].flop_ratio < 0.9
    assert mar["sampler=halton"].verdict == "declared" and "order" in mar["sampler=halton"].note
    assert mar["cache=adsa"].verdict == "refused" and "cache=lazymar" in mar["cache=adsa"].note
    assert llamagen["cache=adsa"].verdict == "changes" and llamagen["cache=adsa"].kv_ratio < ADSA_SHARE_BOUND
    for option in ("cache=lazymar", "sampler=steps", "sampler=halton", "sampler=gtr", "sampler=disa"):
        assert llamagen[option].verdict == "refused", option
    for option in ("sampler=sjd", "sampler=zipar"):
        assert mar[option].verdict == "refused", option
    zipar = llamagen["sampler=zipar"]  # the same tokens through the network, in 144 passes instead of 256
    assert zipar.verdict == "changes" and zipar.model_calls_per_img == 144 and zipar.calls_ratio == 144 / 256
    assert (
        llamagen["sampler=sjd"].verdict == "value-dependent" and "real runs" in llamagen["sampler=sjd"].note
    )


def test_the_audit_flags_an_option_that_does_nothing() -> None:
    """The baseline sampler named as an option changes nothing and warns of nothing: the audit must say so."""
    (row,) = [r for r in audit_model("tiny_mar", ("sampler=mar",)) if r.option != BASELINE]
    assert row.verdict == "NO EFFECT" and row.flop_ratio == 1.0


@pytest.mark.parametrize(
    ("model", "option", "key"),
    [
        ("tiny_mar", "sampler=steps sampler.num_iter=64", "sampler.num_iter=64"),
        ("tiny_mar", "cache=lazymar sampler.num_iter=4", "cache.refresh_start=5"),
        ("tiny_llamagen", "sampler.top_k=2000", "sampler.top_k=2000"),
        ("tiny_llamagen", "cache=adsa cache.budget=1.0", "cache.budget=1"),
    ],
)
def test_capped_or_no_op_settings_warn_and_name_the_key(model: str, option: str, key: str) -> None:
    (row,) = [r for r in audit_model(model, (option,), costs=False) if r.option != BASELINE]
    assert row.verdict == "warned" and key in row.note


@pytest.mark.parametrize("model", [m for m in shipped_models() if not m.startswith("tiny_")])
def test_every_imagenet_model_composes_with_every_option(model: str) -> None:
    """Refusals name the fix; what composes warns of nothing at its defaults (costs: the slow audit)."""
    rows = by_option(audit_model(model, costs=False))
    for option, row in rows.items():
        if row.verdict == "refused":
            assert "use " in row.note or "pick " in row.note, (option, row.note)
        else:
            assert row.verdict in (BASELINE, "unmeasured", "declared", "value-dependent"), (
                option,
                row.verdict,
            )
    if model.startswith("llamagen_"):  # the default ADSA budget saves KV memory at every size
        full = generator_kv_bytes(generator_for(model, "none", None, "meta"), 1, KV_DTYPE)
        adsa = generator_kv_bytes(generator_for(model, "adsa", None, "meta"), 1, KV_DTYPE)
        assert adsa < ADSA_SHARE_BOUND * full


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in shipped_models() if not m.startswith("tiny_")])
def test_every_imagenet_model_passes_the_full_audit(model: str) -> None:
    torch.set_num_threads(1)
    rows = audit_model(model)
    assert "NO EFFECT" not in {r.verdict for r in rows}, [(r.option, r.flop_ratio, r.kv_ratio) for r in rows]
