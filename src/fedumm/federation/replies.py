"""Every client reply is checked here, in the round loop, before any strategy sees it.

A reply passes when:

- its payload is a bounded safetensors message: the header is at most ``MAX_HEADER_BYTES``,
  its parts are ``state`` and optionally ``extras``, and every tensor's byte range fits the
  declared shape and dtype, all read from the header BEFORE anything is decoded;
- ``state`` holds exactly the keys and shapes of the units trained this round, ``extras``
  only keys of those, in a floating wire dtype (F32, F16, BF16), every value finite;
- the sample count is an integer in [1, the client's cap] (``federation.validation.max_samples``,
  else the row count the client reported at setup);
- every metric is a finite number, and the task's local score lies in its range ([0, 1] for a
  bounded metric, >= 0 otherwise);
- under adapter.per_task, its metrics ``trained_rows.<adapter>`` give, for every per-task adapter,
  an integer in [0, sample count], together the sample count; each key is then weighed by its
  adapter's rows (``ClientUpdate.key_samples``), and a reply that trained no rows of an adapter
  must send that adapter's tensors unchanged;
- its update norm ``||state - global||_2`` is at most ``federation.validation.max_update_norm``
  (a number, or ``auto`` = ``auto_norm_factor`` x the median norm of the round's otherwise valid
  replies).

Under ``federation.compression`` the reply carries a ``delta`` part instead of ``state``, and
BEFORE anything is decoded its header must name the configured codec and this round's layout
digest, and hold exactly the codec's fields, each 1-D in the dtype the codec and
``federation.wire_dtype`` fix (int8 / uint8 codes, int16 / int32 / int64 indices, wire-dtype
scales and values) and of the exact length the round's tensor shapes imply; then every code lies
in its range (int8 [-127, 127], int4 nibbles [1, 15] with a zero-code padding nibble), every topk
index in [0, numel) and strictly increasing, every scale finite and non-negative. The server
rebuilds the state = global + decoded delta, and the checks above (finite, norm) run on it.

A reply that fails is dropped with its reason (``Rejected``); nothing of it reaches the strategy.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedumm import codec, compression
from fedumm.adapters import TASK_ADAPTERS, adapter_of_key
from fedumm.compression import Codec, CompressionError
from fedumm.config import ValidationConfig
from fedumm.errors import AdapterStateError
from fedumm.federation.client import TRAINED_ROWS_PREFIX, FitReply
from fedumm.lowrank import rank_shapes, state_rank, truncate
from fedumm.strategies import ClientUpdate
from fedumm.types import DTYPES, State

#: The JSON header of one reply (names, dtypes, shapes, offsets of adapter tensors) stays far below.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
#: The dtypes of a compressed delta's fields, by their safetensors names.
_FIELD_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
}
_FIELD_BYTES = {"I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, **_ITEM_BYTES}


class Rejected(Exception):
    """A reply that failed a check; ``str(exc)`` is the reason recorded in metrics.jsonl."""


@dataclass(frozen=True)
class ReplyRules:
    """What the server knows when a round's replies arrive."""

    shapes: Mapping[str, tuple[int, ...]]  # the units trained this round: key -> shape
    sample_caps: Mapping[int, int]  # client id -> largest sample count it may claim
    score_metric: str  # the local score key, e.g. local_vqa_accuracy
    score_bounded: bool  # the score is a fraction of 1
    #: adapter.client_ranks: client id -> (lowest, highest) LoRA rank its reply may carry; the
    #: factors' shapes in ``shapes`` are then those at the reply's rank.
    ranks: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    def shapes_for(self, client_id: int, header: Mapping[str, object]) -> Mapping[str, tuple[int, ...]]:
        """The shapes client ``client_id``'s reply must have, its rank read from its header."""
        allowed = self.ranks.get(client_id)
        if allowed is None:
            return self.shapes
        declared = {
            name.partition("/")[2]: tuple(info.get("shape", ()))
            for name, info in header.items()
            if name.startswith("state/") and isinstance(info, dict) and name.partition("/")[2] in self.shapes
        }
        try:
            rank = state_rank({k: s for k, s in declared.items() if len(s) == 2})
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        if rank is None:
            return self.shapes
        low, high = allowed
        if not low <= rank <= high:
            raise Rejected(f"LoRA rank {rank} is outside [{low}, {high}] for this client (adapter.client_ranks)")
        return rank_shapes(self.shapes, rank)

    compression: Codec | None = None  # federation.compression's codec: replies carry a delta part
    wire_dtype: str = "float32"  # federation.wire_dtype: the dtype of a delta's scales and values
    #: adapter.per_task: adapter name -> its keys among ``shapes`` (empty: one adapter).
    adapters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def adapter_keys(keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per-task adapter name -> its keys among ``keys`` (``fedumm.adapters.adapter_of_key``)."""
    groups: dict[str, list[str]] = {name: [] for name in TASK_ADAPTERS}
    for key in keys:
        name = adapter_of_key(key)
        if name is not None:
            groups[name].append(key)
    return {name: tuple(group) for name, group in groups.items()}


def _key_samples(
    metrics: Mapping[str, float], samples: int, rules: ReplyRules, state: State, global_state: State
) -> dict[str, int]:
    """adapter.per_task: each key's rows from the reply's ``trained_rows.<adapter>`` metrics."""
    rows: dict[str, int] = {}
    for name in rules.adapters:
        value = metrics.get(TRAINED_ROWS_PREFIX + name)
        if value is None or value != int(value) or not 0 <= value <= samples:
            raise Rejected(f"{TRAINED_ROWS_PREFIX}{name} is {value!r}, expected an integer in [0, {samples}]")
        rows[name] = int(value)
    if sum(rows.values()) != samples:
        raise Rejected(f"trained rows per adapter {rows} do not add up to the sample count {samples}")
    wire = DTYPES[rules.wire_dtype]  # a client sends an untrained adapter as received, at the wire dtype
    for name, keys in rules.adapters.items():
        if rows[name] == 0 and any(not torch.equal(state[k].float(), global_state[k].to(wire).float()) for k in keys):
            raise Rejected(f"adapter {name!r} changed, but {TRAINED_ROWS_PREFIX}{name} is 0")
    return {key: rows[name] for name, keys in rules.adapters.items() for key in keys}


def _header(payload: object) -> tuple[dict, int]:
    if not isinstance(payload, bytes | bytearray) or len(payload) < 8:
        raise Rejected("payload is not a safetensors message")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > MAX_HEADER_BYTES or length > len(payload) - 8:
        raise Rejected(f"payload header of {length} bytes is over its limit or the payload")
    try:
        header = json.loads(bytes(payload[8 : 8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected("payload header is not JSON") from None
    if not isinstance(header, dict):
        raise Rejected("payload header is not a JSON object")
    return header, length


def _delta_layout(rules: ReplyRules, meta: dict) -> dict[str, tuple[str, int]]:
    """field -> (safetensors dtype, length) a compressed reply must hold, after its header names
    the configured codec and this round's tensors."""
    codec_, sent = rules.compression, meta.get(compression.CODEC_KEY)
    if sent != codec_.name:
        raise Rejected(f"payload codec {sent!r}, expected {codec_.name!r} (federation.compression.codec)")
    if meta.get(compression.LAYOUT_KEY) != compression.layout_digest(rules.shapes):
        raise Rejected("its delta was encoded for other tensors than this round's (layout digest differs)")
    layout = compression.expected_layout(codec_, rules.shapes, DTYPES[rules.wire_dtype])
    return {name: (_FIELD_DTYPES[dtype], size) for name, (dtype, size) in layout.items()}


def check_layout(payload: bytes, rules: ReplyRules, client_id: int | None = None) -> None:
    """Keys, parts, dtypes, shapes and byte ranges from the header alone (under adapter.client_ranks
    at the rank the reply's header declares, within the client's range)."""
    header, length = _header(payload)
    meta = header.pop("__metadata__", None) or {}
    shapes = rules.shapes if client_id is None else rules.shapes_for(client_id, header)
    meta = meta if isinstance(meta, dict) else {}
    parts = [p for p in str(meta.get("fedumm_parts", "")).split(",") if p]
    main = compression.PART if rules.compression is not None else "state"
    if main not in parts or any(p not in (main, "extras") for p in parts):
        raise Rejected(f"message parts {parts} (expected {main} and optionally extras)")
    fields = _delta_layout(rules, meta) if rules.compression is not None else {}
    main_keys, end = set(), 0
    for name, info in header.items():
        part, _, key = name.partition("/")
        if not isinstance(info, dict):
            raise Rejected(f"tensor {name!r} has no header entry")
        if part == compression.PART and key in fields and part in parts:
            dtype, size = fields[key]
            if info.get("dtype") != dtype:
                raise Rejected(
                    f"tensor {name!r} has dtype {info.get('dtype')}, expected {dtype} ({rules.compression.name} "
                    f"with federation.wire_dtype {rules.wire_dtype})"
                )
            expected: tuple[int, ...] = (size,)
        elif part in ("state", "extras") and part in parts and key in shapes:
            if info.get("dtype") not in _ITEM_BYTES:
                floating = ", ".join(_ITEM_BYTES)
                raise Rejected(f"tensor {name!r} has dtype {info.get('dtype')}, not a floating wire dtype ({floating})")
            expected = tuple(shapes[key])
        else:
            raise Rejected(f"unexpected tensor {name!r}")
        shape = tuple(info.get("shape", ()))
        if shape != expected:
            raise Rejected(f"tensor {name!r} has shape {shape}, expected {expected}")
        begin, stop = info.get("data_offsets", (0, -1))
        if stop - begin != math.prod(shape) * _FIELD_BYTES[info["dtype"]]:
            raise Rejected(f"tensor {name!r} has a byte range that does not fit its shape")
        end = max(end, stop)
        if part == main:
            main_keys.add(key)
    missing = set(fields or shapes) - main_keys
    if missing:
        what = f"{rules.compression.name} field(s)" if fields else "tensor(s) trained this round"
        raise Rejected(f"{main} lacks {len(missing)} {what}, e.g. {sorted(missing)[0]!r}")
    if len(payload) != 8 + length + end:
        raise Rejected("payload length does not match its header")


def _finite(state: State) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values())


def check_reply(reply: FitReply, rules: ReplyRules, global_state: State) -> ClientUpdate:
    """One reply's own checks (not the norm bound); the update the strategy may see (under
    compression: ``global_state`` + the decoded delta)."""
    if reply.error:
        raise Rejected(f"client failed: {reply.error}")
    try:
        check_layout(reply.payload, rules, reply.client_id)
    except (TypeError, ValueError, AttributeError):  # a header entry of the wrong JSON type
        raise Rejected("payload header is malformed") from None
    try:
        parts = codec.decode_message(reply.payload)
    except AdapterStateError as exc:
        raise Rejected(str(exc)) from None
    extras = parts.get("extras", {})
    if rules.compression is None:
        state = parts["state"]
    else:
        try:
            delta = compression.decode_delta(parts[compression.PART], rules.compression, rules.shapes)
        except CompressionError as exc:
            raise Rejected(str(exc)) from None
        state = {k: global_state[k].float() + delta[k] for k in rules.shapes}
    if not _finite(state) or not _finite(extras):
        raise Rejected("non-finite values (NaN or inf) in its tensors")
    samples, cap = reply.num_samples, rules.sample_caps.get(reply.client_id)
    if type(samples) is not int or samples < 1 or (cap is not None and samples > cap):
        raise Rejected(f"sample count {samples!r} is not an integer in [1, {cap}]")
    metrics = reply.metrics if isinstance(reply.metrics, dict) else None
    if metrics is None or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()
    ):
        raise Rejected("metrics are not finite numbers")
    score = metrics.get(rules.score_metric)
    if score is not None and (score < 0 or (rules.score_bounded and score > 1)):
        raise Rejected(f"{rules.score_metric} {score} is outside [0, {1 if rules.score_bounded else 'inf'})")
    key_samples = _key_samples(metrics, samples, rules, state, global_state) if rules.adapters else None
    return ClientUpdate(reply.client_id, samples, state, dict(metrics), extras, key_samples)


def update_norm(update: ClientUpdate, global_state: State) -> float:
    """||theta_k - theta||_2 over all of the round's tensors, in float64 (a reply of a lower
    LoRA rank against the global factors cut to that rank)."""
    rank = state_rank(update.state)
    if rank is not None and rank != state_rank(global_state):
        global_state = truncate(global_state, rank)
    total = sum(float((update.state[k].double() - global_state[k].double()).pow(2).sum()) for k in update.state)
    return math.sqrt(total)


def norm_bound(norms: Sequence[float], config: ValidationConfig) -> float | None:
    """The round's update-norm bound: the configured number, or k x the median norm (auto)."""
    if config.max_update_norm is None or not norms:
        return None
    if config.max_update_norm == "auto":
        ordered = sorted(norms)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        return config.auto_norm_factor * median
    return float(config.max_update_norm)


def check_replies(
    replies: Sequence[FitReply], rules: ReplyRules, global_state: State, config: ValidationConfig
) -> tuple[list[ClientUpdate], dict[int, str]]:
    """(the updates that passed, in reply order; client id -> reason for each rejected reply)."""
    updates: list[ClientUpdate] = []
    rejected: dict[int, str] = {}
    seen: set[int] = set()
    for reply in replies:
        if reply.client_id in seen:
            rejected[reply.client_id] = "a second reply in the same round"
            continue
        seen.add(reply.client_id)
        try:
            updates.append(check_reply(reply, rules, global_state))
        except Rejected as exc:
            rejected[reply.client_id] = str(exc)
    norms = {u.client_id: update_norm(u, global_state) for u in updates}
    bound = norm_bound(list(norms.values()), config)
    if bound is not None:
        for update in [u for u in updates if norms[u.client_id] > bound]:
            rejected[update.client_id] = f"update norm {norms[update.client_id]:.4g} is above the bound {bound:.4g}"
            updates.remove(update)
    return updates, rejected
