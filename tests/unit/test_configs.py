"""Every preset composes and validates; schemas reject what they should."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO, compose_cfg

from lazygen.config import validate
from lazygen.errors import ConfigError

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_and_validate(name):
    run = validate(compose_cfg(f"experiment={name}"))
    assert run.task_name == name
    if name.startswith("mar_"):  # the baseline rows: mar_<size>_<steps>, no cache
        model, steps = name.rsplit("_", 1)
        assert run.model.name == model and run.sampler.num_iter == int(steps) and run.cache.name == "none"
    elif name.startswith("lazymar_") and name.split("_")[1] in ("b", "l", "h"):  # lazymar_<size>_<steps>
        _, size, steps = name.split("_")
        assert run.model.name == f"mar_{size}" and run.sampler.num_iter == int(steps)
        assert run.cache.name == "lazymar" and run.cache.token_cache and run.cache.head_cache
    elif name.startswith("lazymar_"):  # ablations and tiny presets
        assert run.cache.name == "lazymar" and run.sampler.num_iter == 64
        assert run.model.name == ("tiny_mar" if name in ("lazymar_tiny", "lazymar_sweep") else "mar_h")
    if name.startswith("lazymar_strategy_"):
        assert run.cache.strategy == name.removeprefix("lazymar_strategy_")
    if name.startswith("gtr_table_"):  # gtr_table_<size>[_<group>]: a multirun over methods, baseline first
        size = name.split("_")[2]
        assert run.model.name == ("tiny_mar" if size == "tiny" else f"mar_{size}")
        preset = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
        methods = preset["hydra"]["sweeper"]["params"]["method"].split(",")
        assert methods[0] == "mar_64" and set(methods) <= set(METHODS)
        group = name.split("_")[3] if name.count("_") == 3 else None
        assert all(
            m == "mar_64" or m.endswith(f"_{group}") or m.startswith("lazymar_") for m in methods if group
        )

    if name.startswith("adsa_"):  # ADSA's tables and ablations: LlamaGen with the ADSA cache
        assert run.model.family == "llamagen" and run.cache.name == "adsa" and run.sampler.name == "ar"
        if name.startswith("adsa_ablation_"):
            assert run.model.name == "llamagen_xl" and run.cache.budget == 384
        if name == "adsa_rank_every_tiny":  # job 0, the table's baseline, ranks at every step as the paper
            preset = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
            assert preset["hydra"]["sweeper"]["params"]["cache.rank_every"].split(",")[0] == "1"


LLAMAGEN_METHODS = ("ar", "adsa", "sjd", "zipar", "sjd_adsa", "zipar_adsa")


@pytest.mark.parametrize("name", LLAMAGEN_METHODS)
def test_llamagen_methods_set_what_their_names_say(name):
    run = validate(compose_cfg("model=tiny_llamagen", f"method={name}"))
    sampler, _, cache = name.partition("_")
    if name == "adsa":
        sampler, cache = "ar", "adsa"
    assert run.sampler.name == sampler and run.cache.name == (cache or "none")


@pytest.mark.parametrize("name", [m for m in METHODS if m not in LLAMAGEN_METHODS])
def test_methods_set_what_their_names_say(name):
    run = validate(compose_cfg("model=mar_b", f"method={name}"))
    *kind, steps = name.split("_")
    sampler = {"mar": "mar", "lazymar": "mar", "recap": "mar", "gtr_lazymar": "gtr"}.get(
        "_".join(kind), "_".join(kind)
    )
    assert run.sampler.name == sampler and run.sampler.num_iter == int(steps)
    cache = next((c for c in ("lazymar", "recap") if c in kind), "none")
    assert run.cache.name == cache


@pytest.mark.parametrize("name", MODELS)
def test_model_presets_validate_and_take_the_readme_cfg(name):
    run = validate(compose_cfg(f"model={name}"))
    assert run.sampler.cfg == run.model.default_cfg
    if run.model.family == "synthetic":  # no network: its own one-draw sampler
        assert run.sampler.name == "synthetic" and run.model.image_size == 256
    elif run.model.family == "llamagen":  # next-token decoding, one step per image token
        assert run.sampler.name == "ar" and run.sampler.num_iter == run.model.arch.block_size
        assert run.model.arch.block_size == (256 if name == "tiny_llamagen" else 576)
    else:
        assert run.model.arch.seq_len == 256


def test_custom_sizes_come_from_arch_overrides():
    run = validate(compose_cfg("model=tiny_mar", "model.arch.encoder_depth=3", "model.arch.diffloss_w=32"))
    assert run.model.arch.encoder_depth == 3 and run.model.arch.diffloss_w == 32


def test_unknown_key_is_rejected():
    cfg = compose_cfg("model=tiny_mar", "+sampler.typo=1")
    with pytest.raises(ConfigError, match="sampler"):
        validate(cfg)


def test_head_count_must_divide_width():
    with pytest.raises(ConfigError, match="encoder_num_heads"):
        validate(compose_cfg("model=tiny_mar", "model.arch.encoder_num_heads=5"))


def test_conf_dir_is_the_checkout_conf():
    from lazygen.cli import CONFIG_PATH

    assert Path(CONFIG_PATH) == REPO / "conf"


def test_clip_denoised_needs_bounded_tokens():
    with pytest.raises(ConfigError, match="model.clip_denoised=true needs bounded tokens"):
        validate(compose_cfg("model=mar_b", "model.clip_denoised=true"))
    with pytest.raises(ConfigError, match="no model.tokenizer.latent_bound"):
        validate(compose_cfg("model.tokenizer.latent_bound=null"))  # tiny_mar clips, so it needs its bound
    assert validate(compose_cfg("model.tokenizer.kind=pixel", "model.clip_denoised=true")).model.clip_denoised
    run = validate(compose_cfg("model.init=random"))  # tiny_mar: its KL latents are bounded by the manifest's
    from lazygen.build import build_model

    assert run.model.clip_denoised and build_model(run.model).diffloss.gen_diffusion.x0_range == (-5.9, 5.9)


def test_a_cache_policy_must_implement_the_protocol_of_its_families() -> None:
    from lazygen.cache.base import CausalPolicy, MARPolicy
    from lazygen.registry import _COMPONENTS, register

    with pytest.raises(TypeError, match="MARPolicy"):
        register("cache", "wrong_family_test", schema=dict, families=("mar",))(CausalPolicy)
    with pytest.raises(TypeError, match="CausalPolicy"):
        register("cache", "wrong_family_test", schema=dict, families=("mar", "llamagen"))(MARPolicy)
    assert "wrong_family_test" not in _COMPONENTS["cache"]


def test_flop_hints_are_declared_next_to_the_class_and_inherited() -> None:
    from lazygen.cache import NoCache
    from lazygen.cache.lazymar import LazyMARConf, LazyMARPolicy
    from lazygen.metrics.hints import hints_for
    from lazygen.samplers.sjd import SJDSampler, SJDSamplerConf

    assert hints_for(NoCache()).static_shapes and hints_for(NoCache()).row_affine == ()
    assert hints_for(LazyMARPolicy(LazyMARConf())).row_affine == ("diffusion_head",)
    assert not hints_for(SJDSampler(SJDSamplerConf())).static_shapes

    class Derived(LazyMARPolicy):
        pass

    assert hints_for(Derived(LazyMARConf())).row_affine == ("diffusion_head",)


def _group_yamls() -> list[tuple[str, Path]]:
    groups = ("model", "sampler", "cache", "hardware", "data", "metrics", "logger", "callbacks")
    found = [(g, p) for g in groups for p in sorted((REPO / "conf" / g).glob("*.yaml"))]
    return [(g, p) for g, p in found if (g, p.stem) != ("data", "digits16")]  # a training dataset: no base


def _leaves(node: dict, prefix: tuple = ()):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


@pytest.mark.parametrize(("group", "path"), _group_yamls(), ids=lambda v: getattr(v, "stem", v))
def test_yamls_build_on_their_schema_and_set_only_what_differs(group, path):
    """Each default lives in its dataclass: a YAML that repeats one would let the two drift apart."""
    from omegaconf import OmegaConf

    from lazygen.config import GROUPS, MODEL_SCHEMAS
    from lazygen.registry import component

    raw = yaml.safe_load(path.read_text())
    if group == "model":
        base, schema = f"base_{raw['family']}", MODEL_SCHEMAS[raw["family"]]()
    elif group in ("sampler", "cache"):
        base, schema = f"base_{raw['name']}", component(group, raw["name"]).schema(name=raw["name"])
    else:
        base, schema = "base", GROUPS[group]()
    entries = [e for e in raw["defaults"] if not (isinstance(e, dict) and any("override" in k for k in e))]
    assert entries[0] == base and entries[-1] == "_self_"
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    repeated = []
    for keys, value in _leaves({k: v for k, v in raw.items() if k not in ("defaults", "name", "family")}):
        node = defaults
        for key in keys:
            node = node.get(key, KeyError) if isinstance(node, dict) else KeyError
        if node == value:
            repeated.append(".".join(keys))
    assert not repeated, f"{path.name} repeats its schema's defaults: {repeated}"


def test_shipped_defaults_come_from_the_schema():
    run = validate(compose_cfg("model=mar_b", "cache=lazymar"))
    assert (
        run.model.default_cfg == 2.9
        and run.cache.refresh_interval == 9
        and run.hardware.precision == "32-true"
    )
