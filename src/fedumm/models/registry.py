"""Backend registry: a name maps to a backend class; registering a name twice fails.

Backend modules import only light dependencies at module level, so importing the registry
is cheap; heavy imports (transformers model classes) happen inside the backend's methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedumm.errors import ConfigError

if TYPE_CHECKING:
    from fedumm.models.base import Backend

_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(name: str):
    """Class decorator adding a backend under ``name``."""

    def decorator(cls: type[Backend]) -> type[Backend]:
        if name in _BACKENDS:
            raise ValueError(f"backend {name!r} is already registered by {_BACKENDS[name].__name__}")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return decorator


def _load_builtin_backends() -> None:
    # Importing the modules runs their @register_backend decorators.
    from fedumm.models import blip_vqa, hf_vlm, janus  # noqa: F401


def available_backends() -> list[str]:
    _load_builtin_backends()
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    _load_builtin_backends()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"model.backend: unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}"
        ) from None
