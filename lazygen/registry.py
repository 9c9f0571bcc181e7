"""One registration per component, next to its class: its option name, config schema and model families.

Samplers and cache policies register themselves with :func:`register`; validation, building, error
messages and the option lists read the registry, so adding a component touches only its own module and
its YAML. A component from outside lazygen registers the same way: name its module in the environment
variable ``LAZYGEN_PLUGINS`` (comma-separated) and it is imported before the configuration is composed,
so ``cache=<its name>`` works on the command line (its schema, stored in Hydra's ConfigStore, stands in for
a YAML).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lazygen.errors import ConfigError

KINDS = ("sampler", "cache")
BUILTIN_PACKAGES = (
    "lazygen.samplers",
    "lazygen.cache",
)  # every module in them is imported: a new one registers
PLUGINS_ENV = "LAZYGEN_PLUGINS"
# The option holding a schema's defaults: conf/<kind>/<name>.yaml starts from <kind>/base_<name>; a group with
# one schema (hardware, data, ...) from <group>/base.
BASE_OPTION = "base"
SCHEMA_PREFIX = f"{BASE_OPTION}_"
FAMILY_PROTOCOLS = {
    "mar": "MARPolicy",
    "llamagen": "CausalPolicy",
}  # the cache protocol a family's samplers call


@dataclass(frozen=True)
class Component:
    """A registered sampler or cache policy.

    ``check(conf, run)`` validates the component's settings against the whole run (the model's size, the
    sampler's steps) and raises :class:`~lazygen.errors.ConfigError`; it runs after the family check.
    """

    kind: str
    name: str
    cls: type
    schema: type
    families: tuple[str, ...]
    check: Callable[[Any, Any], None] | None = None

    def build(self, conf: Any) -> Any:
        return self.cls(conf)


_COMPONENTS: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}


def register(
    kind: str,
    name: str,
    *,
    schema: type,
    families: tuple[str, ...],
    check: Callable[[Any, Any], None] | None = None,
) -> Callable[[type], type]:
    """Class decorator: ``@register("cache", "lazymar", schema=LazyMARConf, families=("mar",))``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")

    def add(cls: type) -> type:
        _check_protocol(kind, name, cls, families)
        _COMPONENTS[kind][name] = Component(kind, name, cls, schema, tuple(families), check)
        store_defaults(kind, f"{SCHEMA_PREFIX}{name}", schema(name=name))  # what its YAML builds on
        if not cls.__module__.startswith("lazygen."):  # no YAML: selectable under its own name
            store_defaults(kind, name, schema(name=name))
        return cls

    return add


def _check_protocol(kind: str, name: str, cls: type, families: tuple[str, ...]) -> None:
    """A cache policy implements the protocol of every family it declares (a programming error if not)."""
    if kind != "cache":
        return
    from lazygen.cache import base  # the protocols live with the policies

    for family in families:
        protocol = getattr(base, FAMILY_PROTOCOLS.get(family, ""), None)
        if protocol is not None and not issubclass(cls, protocol):
            raise TypeError(
                f"cache {name!r} ({cls.__qualname__}) declares families={families} but does not subclass "
                f"lazygen.cache.base.{protocol.__name__}, the protocol {family} samplers call."
            )


def store_defaults(group: str, option: str, node: Any) -> None:
    """A dataclass instance's values as the config option ``<group>/<option>``, untyped: composition takes
    the defaults from it, and :func:`lazygen.config.validate` still types and range-checks the result (so
    a bad key or value is a ConfigError naming the fix, not a composition traceback)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.structured(node))
    ConfigStore.instance().store(group=group, name=option, node=values, provider="lazygen")


def load_builtin_components() -> None:
    """Import lazygen's own samplers and cache policies (they register on import)."""
    for package in BUILTIN_PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")


def load_components() -> None:
    """Import the built-in components and the user's ``LAZYGEN_PLUGINS`` modules (they register on import)."""
    load_builtin_components()
    plugins = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"{PLUGINS_ENV} names the module {module!r}, which could not be imported ({exc}). Check the "
                "spelling and that it is on PYTHONPATH, or remove it from the variable."
            ) from None


def components(kind: str, family: str | None = None) -> dict[str, Component]:
    """The registered components of a kind (those that run on ``family`` when given), by name."""
    load_components()
    return {n: c for n, c in _COMPONENTS[kind].items() if family is None or family in c.families}


def component(kind: str, name: str) -> Component:
    """The component ``<kind>=<name>``, or a ConfigError listing the options."""
    found = components(kind)
    if name not in found:
        raise ConfigError(f"{kind}.name={name!r} is not supported; choose one of: {', '.join(found)}.")
    return found[name]


def require_family(kind: str, name: str, family: str, model_name: str) -> None:
    """A component that cannot run on this model family is a ConfigError naming the ones that can."""
    entry = component(kind, name)
    if family not in entry.families:
        usable = " or ".join(f"{kind}={n}" for n in components(kind, family))
        verb = "decode" if kind == "sampler" else "run"
        raise ConfigError(
            f"{kind}={name} cannot {verb} model={model_name} (a {family} model; it works with "
            f"{', '.join(entry.families)} models); use {usable}."
        )
