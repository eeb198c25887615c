"""NVIDIA FLARE engine: the same ``ClientRuntime`` and ``Server`` as the in-process engine,
inside a FLARE client (Client API) and a FLARE controller.

- ``simulate_nvflare(config)``: ``fedumm run --set engine.name=nvflare``; runs the job in
  FLARE's simulator and writes the usual run folder.
- ``export_job(config, out)``: ``fedumm export``; a job folder for ``nvflare job submit``.
- ``poc``: a loopback deployment (provisioned server and clients as separate processes).

Every nvflare import of fedumm lives in this package, and only inside these functions'
modules: importing fedumm (or this package) does not need nvflare.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedumm.errors import ConfigError

if TYPE_CHECKING:
    from fedumm.config import RunConfig
    from fedumm.federation import RunResult


def require_nvflare() -> None:
    try:
        import nvflare  # noqa: F401
    except ImportError:
        raise ConfigError(
            "engine.name=nvflare needs NVIDIA FLARE: pip install 'fedumm[nvflare]' (nvflare==2.9.0)"
        ) from None


def simulate_nvflare(config: RunConfig, **kwargs) -> RunResult:
    require_nvflare()
    from fedumm.engines.nvflare.runner import simulate_nvflare as run

    return run(config, **kwargs)


def export_job(config: RunConfig, out: str | Path) -> Path:
    require_nvflare()
    from fedumm.engines.nvflare.job import export_job as export

    return export(config, out)


__all__ = ["export_job", "require_nvflare", "simulate_nvflare"]
