"""Backend registry: a name maps to a backend class; registering a name twice fails.

The built-in backends register when ``fedumm.models`` is imported (its ``__init__`` holds one
import line per backend module), which any import of this module does first. Backend modules
import only light dependencies at module level; heavy imports (transformers model classes)
happen inside the backend's methods.
"""

from __future__ import annotations

from fedumm.errors import ConfigError
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


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"model.backend: unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}"
        ) from None
