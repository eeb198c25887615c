"""The data source registry: ``data.source: <name>`` picks one, ``data.<name>.*`` configures it.

A source is one module in this package holding its config section (a ``fedumm.config_base.Section``),
its load function ``load(section, seed) -> LoadedSamples`` and, at its end, its spec:
``SPEC = SourceSpec("<name>", <Section>, load, required="<key>")`` (``required``: the section key that
must be set when the source is selected, or omit it). To add a source:

1. write ``fedumm/data/sources/<name>.py`` as above (shared row helpers: ``fedumm.data.rows``);
2. import it below and add its registration line, ``register(<name>.SPEC)``.

``DataConfig`` then has ``data.<name>`` and accepts ``data.source: <name>``; ``load_source`` calls
``load``. A source without test data returns ``test=None`` (``data.global_test_fraction`` is held out).
"""

from __future__ import annotations

from fedumm.data.sources import client_files, crisismmd, hf, llava_json, medalpaca, slake, synthetic, table, vqa_rad
from fedumm.data.sources.base import LoadedSamples, SourceSpec
from fedumm.errors import ConfigError

__all__ = [
    "LoadedSamples",
    "SourceSpec",
    "available_sources",
    "get_source",
    "register",
    "unknown_source_message",
    "unregister",
]

_REGISTRY: dict[str, SourceSpec] = {}


def register(spec: SourceSpec) -> SourceSpec:
    """Add ``spec`` under its name; a name can only be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"data source {spec.name!r} is already registered ({_REGISTRY[spec.name].config.__name__})")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a source (tests register toy sources and remove them again)."""
    get_source(name)
    del _REGISTRY[name]


def available_sources() -> list[str]:
    """Registered source names, in registration order."""
    return list(_REGISTRY)


def unknown_source_message(names: list[str] | None = None) -> str:
    """The error line ``data.source: must be one of 'a', 'b' or 'c'`` over ``names`` (default: every
    registered source), worded as a Literal mismatch reads in the other config errors."""
    quoted = [repr(name) for name in (available_sources() if names is None else names)]
    choices = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"data.source: must be one of {choices}"


def get_source(name: str) -> SourceSpec:
    """The spec registered under ``name``.

    Raises:
        ConfigError: naming ``data.source`` and the registered names, if there is none.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"{unknown_source_message()} (got {name!r})") from None


# One line per source; the order is the order of data.<name> sections and of error messages.
register(synthetic.SPEC)
register(hf.SPEC)
register(llava_json.SPEC)
register(client_files.SPEC)
register(table.SPEC)
register(crisismmd.SPEC)
register(vqa_rad.SPEC)
register(slake.SPEC)
register(medalpaca.SPEC)
