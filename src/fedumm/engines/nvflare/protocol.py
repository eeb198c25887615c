"""What the FLARE controller and the FLARE client script agree on. No nvflare import here, so
the pieces (payload packing, site ids, the data a site trains on) are testable without FLARE.

Messages: every task's FLModel carries one parameter, ``PAYLOAD_KEY``, a uint8 numpy array
holding fedumm's safetensors message bytes (``codec.encode_message``) unchanged, so only
adapter tensors (and strategy extras) travel and nothing is pickled. Everything else (round,
the client's integer id, sample counts, metrics) travels in ``FLModel.meta`` as plain JSON
types.

Tasks: ``SETUP_TASK`` once to every client before round 1 (the client loads its data and
model and answers with its data statistics, no training), then ``TRAIN_TASK`` per round to
the sampled clients.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedumm.config import DataConfig, RunConfig, SiteConfig
from fedumm.errors import ConfigError, FedummError

SETUP_TASK = "fedumm_setup"
TRAIN_TASK = "train"
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
    except Exception as exc:  # pydantic ValidationError: name the file and the first problem
        first = getattr(exc, "errors", lambda: [{"loc": (), "msg": str(exc)}])()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"site config {path}: {key}: {first['msg']}") from None


def load_site_config(site: str, workspace_root: Path | None, config: RunConfig,
                     environ: Mapping[str, str], app_config_dir: Path | None = None) -> tuple[SiteConfig, str]:
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
    from fedumm.data.federated import load_source

    loaded = load_source(site.data, site.seed if site.seed is not None else seed)
    return list(loaded.train), list(loaded.test), dict(loaded.skipped_by_file)


def data_stats(train: Sequence[Mapping], test: Sequence[Mapping], data: DataConfig,
               skipped_by_file: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a client tells the server about its data: counts only, never rows. Partition label
    counts and modality counts over all its rows (as ``partition.json`` counts them), the
    answer counts of its training rows (for the majority-answer baseline) and the broken rows
    its loader skipped, per file."""
    from fedumm.data.modality import modality_counts
    from fedumm.data.partition import column_values

    rows = list(train) + list(test)
    labels = column_values(rows, data.partition.label_column, "data.partition.label_column")
    return {
        "size": len(rows),
        "label_counts": [[_jsonable(k), v] for k, v in Counter(labels).items()],
        "answer_counts": dict(Counter(str(row["multiple_choice_answer"]) for row in train)),
        "modality_counts": modality_counts(rows),
        "skipped_rows_by_file": {str(k): int(v) for k, v in (skipped_by_file or {}).items()},
    }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def partition_from_stats(stats: Sequence[Mapping[str, Any]], sites: Sequence[str] | None = None):
    """``PartitionStats`` from the clients' reported counts (in client-id order), with the
    extras the in-process partition has: modality counts when some row lacks a modality, and
    skipped rows per file. With ``sites`` (site placement: each site loaded its own files) the
    sites' skipped rows are listed as ``"<site>: <file>"``; without (partition placement) every
    client loaded the same ``data.*`` and reports the same skips, counted once."""
    from fedumm.data.modality import BOTH
    from fedumm.data.partition import PartitionStats

    counts = [{label: n for label, n in s["label_counts"]} for s in stats]
    labels = sorted({label for c in counts for label in c}, key=str)
    modalities = [dict(s.get("modality_counts", {})) for s in stats]
    if sites is None:
        skipped = dict(stats[0].get("skipped_rows_by_file", {})) if stats else {}
    else:
        skipped = {f"{site}: {name}": n for site, s in zip(sites, stats)
                   for name, n in s.get("skipped_rows_by_file", {}).items()}
    return PartitionStats(
        sizes=[int(s["size"]) for s in stats],
        label_counts=[{label: c.get(label, 0) for label in labels} for c in counts],
        labels=labels,
    ).with_extras(
        modality_counts=modalities if any(m.get(BOTH, 0) != sum(m.values()) for m in modalities) else None,
        skipped_rows_by_file=skipped,
    )


def majority_from_stats(stats: Sequence[Mapping[str, Any]], test: Sequence[Mapping],
                        task: str = "vqa") -> tuple[str, float | None]:
    """The majority-answer baseline from the clients' answer counts (= over the pooled
    training rows, as the in-process engine computes it)."""
    from fedumm.engines.simulation import majority_baseline_accuracy

    pooled = [{"multiple_choice_answer": answer} for s in stats
              for answer, n in s["answer_counts"].items() for _ in range(int(n))]
    if not pooled:
        return "", None if task == "caption" else 0.0
    return majority_baseline_accuracy(pooled, test, task)
