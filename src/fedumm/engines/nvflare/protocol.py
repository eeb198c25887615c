"""What the FLARE controller and the FLARE client script agree on. No nvflare import here, so
the pieces (payload packing, site ids, the data a site trains on) are testable without FLARE.

Messages: every task's FLModel carries one parameter, ``PAYLOAD_KEY``, a uint8 numpy array
holding fedumm's safetensors message bytes (``codec.encode_message``) unchanged, so only
adapter tensors (and strategy extras) travel and nothing is pickled. Everything else (round,
the client's integer id, sample counts, metrics) travels in ``FLModel.meta`` as plain JSON
types.

Tasks: ``SETUP_TASK`` once to every client before round 1 (the client loads its data and
model and answers with its data statistics, no training), then ``TRAIN_TASK`` per round to
the sampled clients, then ``EXCHANGE_TASK`` for each step of a multi-step client protocol
(``Transport.exchange``: secure aggregation): each site its own payload, the stage in
``META_STAGE``. A site whose protocol step fails answers with ``META_ERROR`` (the reason) and
no payload, and the server counts it absent; the Client API has no error return code, and
raising would end the site's trainer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from fedumm.config import RunConfig, SiteConfig
from fedumm.data.federated import load_source
from fedumm.errors import ConfigError, FedummError

SETUP_TASK = "fedumm_setup"
TRAIN_TASK = "train"
EXCHANGE_TASK = "fedumm_exchange"
PAYLOAD_KEY = "fedumm"

# Files inside the exported job's apps.
CONFIG_FILE = "fedumm_config.yaml"  # app config folder: the resolved run config
CLIENT_SCRIPT = "fedumm_client.py"  # app custom folder: the client entry script
RUN_FOLDER = "fedumm_run"  # server job workspace: the run folder the controller writes
CLIENT_STATE_FILE = "fedumm_client_state.safetensors"  # client app folder: state kept across restarts
JOB_SITE_FILE = "fedumm_site.yaml"  # a per-site client app's config folder: its engine.sites entry

# Where a site keeps its own data config (relative to its workspace root) and the variable that
# overrides it.
SITE_CONFIG_FILE = Path("local") / "fedumm_site.yaml"
SITE_CONFIG_ENV = "FEDUMM_SITE_CONFIG"

# FLModel.meta keys.
META_ROUND = "fedumm_round"
META_CLIENT_IDS = "fedumm_client_ids"
META_NUM_CLIENTS = "fedumm_num_clients"
META_PLACEMENT = "fedumm_data_placement"
META_NUM_SAMPLES = "fedumm_num_samples"
META_METRICS = "fedumm_metrics"
META_STATS = "fedumm_stats"
META_STAGE = "fedumm_stage"  # an exchange task's protocol stage
META_ERROR = "fedumm_error"  # an exchange answer's failure reason (no payload then)


def pack(payload: bytes) -> np.ndarray:
    """Message bytes as the uint8 array FLARE carries (a view: no copy)."""
    return np.frombuffer(payload, dtype=np.uint8)


def unpack(params: Any) -> bytes:
    """Message bytes back from a received FLModel's params."""
    if not isinstance(params, Mapping) or PAYLOAD_KEY not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise FedummError(f"FLARE message has no {PAYLOAD_KEY!r} payload (got {keys})")
    value = params[PAYLOAD_KEY]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise FedummError(f"FLARE payload must be a 1-D uint8 array, got {array.dtype} {array.shape}")
    return array.tobytes()


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def client_ids(site_names: Iterable[str]) -> dict[str, int]:
    """Site name -> integer client id: natural order, so site-1..site-K are clients 0..K-1 (the
    in-process engine's client ids, which seed local training and key the metrics)."""
    return {name: i for i, name in enumerate(sorted(site_names, key=_natural_key))}


def resolve_placement(config: RunConfig, exported: bool) -> str:
    placement = config.engine.data_placement
    if placement == "auto":
        return "site" if exported else "partition"
    return placement


def _read_site_file(path: Path) -> SiteConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"site config {path} is not valid YAML: {exc}") from None
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as exc:  # name the file and the first problem
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"site config {path}: {key}: {first['msg']}") from None


def load_site_config(
    site: str,
    workspace_root: Path | None,
    config: RunConfig,
    environ: Mapping[str, str],
    app_config_dir: Path | None = None,
) -> tuple[SiteConfig, str]:
    """The site's own data config and where it came from: ``$FEDUMM_SITE_CONFIG``, else the
    site workspace's ``local/fedumm_site.yaml``, else the job's entry for the site
    (``engine.sites.<site>``: in an exported per-site app, its ``config/fedumm_site.yaml``)."""
    if environ.get(SITE_CONFIG_ENV):
        path = Path(environ[SITE_CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{SITE_CONFIG_ENV}: site config file {path} not found")
        return _read_site_file(path), str(path)
    if workspace_root is not None and (workspace_root / SITE_CONFIG_FILE).is_file():
        path = workspace_root / SITE_CONFIG_FILE
        return _read_site_file(path), str(path)
    if app_config_dir is not None and (app_config_dir / JOB_SITE_FILE).is_file():
        return _read_site_file(app_config_dir / JOB_SITE_FILE), f"engine.sites.{site}"
    if site in config.engine.sites:
        return config.engine.sites[site], f"engine.sites.{site}"
    where = f"{workspace_root / SITE_CONFIG_FILE}" if workspace_root is not None else str(SITE_CONFIG_FILE)
    raise ConfigError(
        f"site {site}: no data config; write {where} (a YAML mapping with a 'data:' section) "
        f"or set engine.sites.{site} in the job config"
    )


def load_site_rows(site: SiteConfig, seed: int) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(train, test, skipped rows per file) of one site: its source's training rows and its
    test split (or the held-out share of its rows when the source has none) as the local test
    set, and the broken rows its ``on_error: skip`` policy dropped."""
    loaded = load_source(site.data, site.seed if site.seed is not None else seed)
    return list(loaded.train), list(loaded.test), dict(loaded.skipped_by_file)
