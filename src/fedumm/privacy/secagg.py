"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
(CCS '17), in its complete-graph form (every pair of sampled clients shares a mask), with Flower's
SecAgg+ as the reference for the wire details (16-byte Shamir chunks, AES-CTR as the PRG). This is
pure protocol code over ``bytes``: the round loop carries the messages (``Transport.exchange``).

Each client u encodes its vector as fixed-point integers ``q_u`` (clamp to [-R, R], quantize to
``bits`` bits) and uploads ``y_u = q_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``
mod 2^64: a fresh self mask ``b_u`` and one pairwise mask per other client, agreed by X25519, that
cancels in the sum. Masks of a client that drops out are recovered from t-of-n Shamir shares that
every client hands to the others (encrypted end to end, through the server) before uploading.

Stages, and what the server sees in each:

1. ``advertise_keys``: server -> client: the round's params (JSON). Client -> server: two X25519
   public keys, c (share encryption) and s (pairwise masks). Server sees: public keys.
2. ``share_keys``: server -> client: the public keys of the clients that advertised. Client ->
   server: for each other client v, AES-GCM ciphertexts of its Shamir shares of b_u and of its
   s secret key. Server sees: ciphertexts it cannot open (the keys are pairwise X25519 secrets).
3. ``masked_input``: server -> client v: the ciphertexts addressed to v. Client -> server: the
   masked vector ``y_u`` (raw little-endian uint64). Server sees: vectors that are uniform mod 2^64
   one by one (the self mask alone is a one-time pad).
4. ``unmask``: server -> survivor: who sent a masked vector (survivors) and who shared keys but did
   not (dropped). Survivor -> server: its share of b_w for each survivor w and of s_sk_d for each
   dropped d, never both for one client. Server sees: with t shares, each survivor's b_w (which
   removes only the self masks, so it still cannot open a single y_w: the pairwise masks remain)
   and each dropped client's s key (which removes that client's pairwise masks; its input was never
   sent). The sum of the survivors' encoded vectors is what is left.

Threat model: the paper's honest-but-curious setting. The server, even with fewer than t colluding
clients, learns the survivors' sum and nothing about a single input. Lost or corrupted messages are
drop-outs (a round with fewer than t clients left fails); a ciphertext that fails authentication
costs its receiver's share only. Not covered: the paper's actively secure variant (signed keys, a
consistency round), so a lying server could send different survivor lists to different clients;
t > n/2 keeps it from collecting t shares of both secrets of one client that way (each client gives
only one of the two). Messages are JSON (bytes fields in base64) or raw uint64 arrays; nothing is
unpickled.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedumm.errors import AggregationError, ConfigError

__all__ = [
    "STAGES",
    "Exchange",
    "SecAggClient",
    "SecAggMessageError",
    "SecAggParams",
    "SecAggParamsError",
    "SecureSum",
    "dequantize",
    "local_exchange",
    "quantize",
    "secure_sum",
]

STAGES = ("advertise_keys", "share_keys", "masked_input", "unmask")

Exchange = Callable[[str, dict[int, bytes]], dict[int, bytes]]

_KEY_BYTES = 32  # X25519 keys, self-mask seeds, HKDF outputs
_CHUNK = 16  # pycryptodome's Shamir shares 16-byte secrets (elements of GF(2^128))
_NONCE = 12  # AES-GCM nonce, random per ciphertext (the pair's key serves both directions)
_IDS = struct.Struct("<qq")  # sender, receiver, at the head of a share plaintext
_PLAINTEXT_BYTES = _IDS.size + 2 * _KEY_BYTES  # ids, share of b_u, share of s_sk_u
_CIPHERTEXT_BYTES = _NONCE + _PLAINTEXT_BYTES + 16  # + GCM tag
_MAX_ID = 2**63 - 1


class SecAggMessageError(ValueError):
    """A secure-aggregation message is malformed, comes out of order, or asks for what the protocol
    forbids (e.g. both shares of one client). The message names the stage."""


class SecAggParamsError(ConfigError, ValueError):
    """Secure-aggregation params out of range (a ConfigError for the CLI, a ValueError for code)."""


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SecAggParams:
    """One round's protocol parameters, sent to every client in ``advertise_keys``."""

    clients: tuple[int, ...]
    threshold: int
    vector_size: int
    clipping_range: float = 8.0
    quantization_bits: int = 24
    round_num: int = 0

    def __post_init__(self) -> None:
        clients = tuple(self.clients)
        if not _is_int(self.quantization_bits) or not 8 <= self.quantization_bits <= 40:
            raise SecAggParamsError(f"secagg: quantization_bits must be in [8, 40], got {self.quantization_bits}")
        if len(clients) * 2**self.quantization_bits >= 2**63:  # the unmasked sum must not wrap mod 2^64
            raise SecAggParamsError(
                f"secagg: {len(clients)} clients x 2^{self.quantization_bits} levels may overflow the 63-bit sum; "
                "use fewer quantization_bits"
            )
        if not all(_is_int(c) and 0 <= c <= _MAX_ID for c in clients):
            raise SecAggParamsError(f"secagg: client ids must be integers in [0, 2^63), got {list(clients)}")
        clients = tuple(sorted(int(c) for c in clients))
        if len(set(clients)) != len(clients):
            raise SecAggParamsError(f"secagg: duplicate client ids in {list(clients)}")
        # Normalised here so that share indices (sorted position + 1) agree on every side.
        object.__setattr__(self, "clients", clients)
        n = len(clients)
        if not _is_int(self.threshold) or not 2 <= self.threshold <= n:
            raise SecAggParamsError(
                f"secagg: threshold must be an integer in [2, {n}] (the clients), got {self.threshold}"
            )
        if not _is_int(self.vector_size) or self.vector_size < 1:
            raise SecAggParamsError(f"secagg: vector_size must be a positive integer, got {self.vector_size}")
        if (
            isinstance(self.clipping_range, bool)
            or not isinstance(self.clipping_range, (int, float))
            or not math.isfinite(self.clipping_range)
            or self.clipping_range <= 0
        ):
            raise SecAggParamsError(f"secagg: clipping_range must be a positive number, got {self.clipping_range}")
        if not _is_int(self.round_num) or not 0 <= self.round_num <= _MAX_ID:
            raise SecAggParamsError(f"secagg: round_num must be a non-negative integer, got {self.round_num}")
        for name in ("threshold", "vector_size", "quantization_bits", "round_num"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "clipping_range", float(self.clipping_range))

    def step(self) -> float:
        """The fixed-point step: 2R / (2^bits - 1)."""
        return 2 * self.clipping_range / (2**self.quantization_bits - 1)

    def share_index(self, client_id: int) -> int:
        """Shamir share index of a client: its position among the sorted clients, + 1."""
        return self.clients.index(client_id) + 1

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "clients": list(self.clients),
                "threshold": self.threshold,
                "vector_size": self.vector_size,
                "clipping_range": self.clipping_range,
                "quantization_bits": self.quantization_bits,
                "round_num": self.round_num,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggParams:
        obj = _json_object(data, "advertise_keys")
        keys = {"clients", "threshold", "vector_size", "clipping_range", "quantization_bits", "round_num"}
        if set(obj) != keys:
            raise SecAggMessageError(f"advertise_keys: params need exactly the keys {sorted(keys)}, got {sorted(obj)}")
        if not isinstance(obj["clients"], list):
            raise SecAggMessageError("advertise_keys: params.clients must be a list")
        try:
            return cls(**{**obj, "clients": tuple(obj["clients"])})
        except SecAggParamsError as exc:
            raise SecAggMessageError(f"advertise_keys: {exc}") from exc


# -- encoding -------------------------------------------------------------------------------------


def quantize(vector: np.ndarray, params: SecAggParams) -> np.ndarray:
    """Clamp to [-R, R] and map to integers in [0, 2^bits - 1] (uint64)."""
    r = params.clipping_range
    levels = 2**params.quantization_bits - 1
    clamped = np.clip(np.asarray(vector, dtype=np.float64), -r, r)
    return np.rint((clamped + r) / (2 * r) * levels).astype(np.uint64)


def dequantize(sum_q: np.ndarray, n_summands: int, params: SecAggParams) -> np.ndarray:
    """The float sum of ``n_summands`` clamped vectors whose quantized sum is ``sum_q``."""
    return sum_q.astype(np.float64) * params.step() - n_summands * params.clipping_range


# -- primitives (all from cryptography / pycryptodome) ----------------------------------------------


def _hkdf(secret: bytes, purpose: str, round_num: int) -> bytes:
    # The round is in the info, so a pair's keys (and masks) differ from one round to the next.
    info = f"fedumm-secagg/{purpose}/round={round_num}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(secret)


def _prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` uint64 masks: the AES-256-CTR keystream of ``seed``. A fixed nonce is safe because
    every seed masks one vector only (fresh b_u; pairwise seeds are per round)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * size)), dtype="<u8")


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _agree(private_key: X25519PrivateKey, peer_public: bytes, purpose: str, round_num: int) -> bytes:
    # X25519 raises ValueError on a low-order peer key (all-zero shared secret).
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return _hkdf(shared, purpose, round_num)


def _associated_data(round_num: int, sender: int, receiver: int) -> bytes:
    return f"fedumm-secagg/shares/round={round_num}/{sender}->{receiver}".encode()


def _split(secret: bytes, params: SecAggParams) -> list[bytes]:
    """Shamir-share a 32-byte secret as two 16-byte chunks: share i (index i + 1) = chunk shares."""
    chunks = [Shamir.split(params.threshold, len(params.clients), secret[i : i + _CHUNK]) for i in (0, _CHUNK)]
    return [low + high for (_, low), (_, high) in zip(*chunks)]


def _combine(shares: list[tuple[int, bytes]]) -> bytes:
    """The 32-byte secret from exactly t (index, 32-byte share) pairs."""
    return b"".join(Shamir.combine([(i, s[o : o + _CHUNK]) for i, s in shares]) for o in (0, _CHUNK))


# -- message parsing ------------------------------------------------------------------------------


def _json_object(data: bytes, stage: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SecAggMessageError(f"{stage}: message is not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise SecAggMessageError(f"{stage}: message must be a JSON object, got {type(obj).__name__}")
    return obj


def _field(obj: dict[str, Any], key: str, kind: type, stage: str) -> Any:
    if key not in obj:
        raise SecAggMessageError(f"{stage}: message has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise SecAggMessageError(f"{stage}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _b64(text: object, length: int, what: str, stage: str) -> bytes:
    if not isinstance(text, str):
        raise SecAggMessageError(f"{stage}: {what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise SecAggMessageError(f"{stage}: {what} is not base64 ({exc})") from exc
    if len(raw) != length:
        raise SecAggMessageError(f"{stage}: {what} has {len(raw)} bytes, expected {length}")
    return raw


def _enc(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _client_id(key: object, stage: str) -> int:
    # JSON object keys are strings; accept only the canonical decimal form of an id.
    if isinstance(key, str) and key.isdigit() and str(int(key)) == key:
        return int(key)
    if _is_int(key) and not isinstance(key, str):
        return int(key)  # list entries
    raise SecAggMessageError(f"{stage}: {key!r} is not a client id")


def _id_list(obj: dict[str, Any], key: str, stage: str) -> list[int]:
    ids = [_client_id(x, stage) for x in _field(obj, key, list, stage)]
    if len(set(ids)) != len(ids):
        raise SecAggMessageError(f"{stage}: {key!r} lists a client twice")
    return ids


def _bytes_map(obj: dict[str, Any], key: str, length: int, stage: str) -> dict[int, bytes]:
    return {
        _client_id(k, stage): _b64(v, length, f"{key}[{k}]", stage) for k, v in _field(obj, key, dict, stage).items()
    }


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- client ---------------------------------------------------------------------------------------


class SecAggClient:
    """One client's side: answers the four stages in order, each with bytes."""

    def __init__(self, client_id: int, vector: np.ndarray) -> None:
        vector = np.asarray(vector, dtype=np.float64)
        if vector.ndim != 1:
            raise ValueError(f"secagg client {client_id}: the vector must be 1-D, got shape {vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"secagg client {client_id}: the vector has non-finite values")
        self.client_id = int(client_id)
        self._vector = vector
        self._next = 0  # index into STAGES of the stage expected next
        self._params: SecAggParams | None = None
        self._c_sk = X25519PrivateKey.generate()
        self._s_sk = X25519PrivateKey.generate()
        self._public: dict[int, tuple[bytes, bytes]] = {}  # stage 1 clients -> (c_pk, s_pk)
        self._b_seed = b""  # self-mask seed b_u, drawn in share_keys
        self._own_shares: tuple[bytes, bytes] = (b"", b"")  # this client's shares of its own b_u, s_sk_u
        self._ciphertexts: dict[int, bytes] = {}  # stage 2 clients (not self) -> ciphertext to self
        self._masked_with: frozenset[int] = frozenset()  # the stage-2 clients, self included

    def handle(self, stage: str, message: bytes) -> bytes:
        if stage not in STAGES:
            raise SecAggMessageError(f"secagg: unknown stage {stage!r}; the stages are {STAGES}")
        if self._next >= len(STAGES):
            raise SecAggMessageError(f"{stage}: client {self.client_id} has finished the protocol")
        if stage != STAGES[self._next]:
            raise SecAggMessageError(
                f"{stage}: client {self.client_id} expects stage {STAGES[self._next]!r} next, got {stage!r}"
            )
        handler = {
            "advertise_keys": self._advertise_keys,
            "share_keys": self._share_keys,
            "masked_input": self._masked_input,
            "unmask": self._unmask,
        }[stage]
        reply = handler(message)
        self._next += 1  # only after a handled message: a malformed one can be answered again
        return reply

    @property
    def params(self) -> SecAggParams:
        if self._params is None:
            raise SecAggMessageError(f"secagg: client {self.client_id} has not received the params yet")
        return self._params

    def _advertise_keys(self, message: bytes) -> bytes:
        params = SecAggParams.from_bytes(message)
        if self.client_id not in params.clients:
            raise SecAggMessageError(f"advertise_keys: client {self.client_id} is not among {list(params.clients)}")
        if self._vector.size != params.vector_size:
            raise ValueError(
                f"advertise_keys: client {self.client_id} has {self._vector.size} values, "
                f"the round expects {params.vector_size}"
            )
        self._params = params
        return _json({"c_pk": _enc(_raw(self._c_sk.public_key())), "s_pk": _enc(_raw(self._s_sk.public_key()))})

    def _share_keys(self, message: bytes) -> bytes:
        stage, params, me = "share_keys", self.params, self.client_id
        keys = _field(_json_object(message, stage), "public_keys", dict, stage)
        public: dict[int, tuple[bytes, bytes]] = {}
        for key, pair in keys.items():
            cid = _client_id(key, stage)
            if cid not in params.clients:
                raise SecAggMessageError(f"{stage}: client {cid} is not in this round")
            if not isinstance(pair, list) or len(pair) != 2:
                raise SecAggMessageError(f"{stage}: public_keys[{cid}] must be [c_pk, s_pk]")
            public[cid] = (
                _b64(pair[0], _KEY_BYTES, f"c_pk of {cid}", stage),
                _b64(pair[1], _KEY_BYTES, f"s_pk of {cid}", stage),
            )
        mine = (_raw(self._c_sk.public_key()), _raw(self._s_sk.public_key()))
        if public.get(me) != mine:
            raise SecAggMessageError(f"{stage}: the keys listed for client {me} are not the ones it advertised")
        if len(public) < params.threshold:
            raise SecAggMessageError(f"{stage}: {len(public)} clients advertised keys, threshold {params.threshold}")
        self._public = public

        b_seed = os.urandom(_KEY_BYTES)
        self._b_seed = b_seed
        s_sk_raw = self._s_sk.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        b_shares, sk_shares = _split(b_seed, params), _split(s_sk_raw, params)
        own = params.share_index(me) - 1
        self._own_shares = (b_shares[own], sk_shares[own])
        ciphertexts = {}
        for v, (c_pk_v, _) in public.items():
            if v == me:
                continue
            try:
                key = _agree(self._c_sk, c_pk_v, "shares", params.round_num)
            except ValueError as exc:
                raise SecAggMessageError(f"{stage}: c_pk of client {v} is not a usable X25519 key ({exc})") from exc
            i = params.share_index(v) - 1
            plaintext = _IDS.pack(me, v) + b_shares[i] + sk_shares[i]
            nonce = os.urandom(_NONCE)
            sealed = AESGCM(key).encrypt(nonce, plaintext, _associated_data(params.round_num, me, v))
            ciphertexts[str(v)] = _enc(nonce + sealed)
        return _json({"ciphertexts": ciphertexts})

    def _masked_input(self, message: bytes) -> bytes:
        stage, params, me = "masked_input", self.params, self.client_id
        received = _bytes_map(_json_object(message, stage), "ciphertexts", _CIPHERTEXT_BYTES, stage)
        senders = set(received)
        if me in senders or not senders <= set(self._public):
            raise SecAggMessageError(f"{stage}: ciphertexts from clients that did not advertise keys (or self)")
        if len(senders) + 1 < params.threshold:
            raise SecAggMessageError(f"{stage}: {len(senders) + 1} clients shared keys, threshold {params.threshold}")
        self._ciphertexts = received
        self._masked_with = frozenset(senders | {me})

        masked = quantize(self._vector, params) + _prg(self._b_seed, params.vector_size)
        for v in sorted(senders):
            try:
                seed = _agree(self._s_sk, self._public[v][1], "mask", params.round_num)
            except ValueError as exc:
                raise SecAggMessageError(f"{stage}: s_pk of client {v} is not a usable X25519 key ({exc})") from exc
            # u < v adds, u > v subtracts: the pair's masks cancel in the sum (uint64 wraps mod 2^64).
            if me < v:
                masked += _prg(seed, params.vector_size)
            else:
                masked -= _prg(seed, params.vector_size)
        return masked.astype("<u8", copy=False).tobytes()

    def _unmask(self, message: bytes) -> bytes:
        stage, params, me = "unmask", self.params, self.client_id
        obj = _json_object(message, stage)
        survivors, dropped = _id_list(obj, "survivors", stage), _id_list(obj, "dropped", stage)
        both = set(survivors) & set(dropped)
        if both:
            # Shares of b_w and of s_sk_w together would let the server open w's masked input.
            raise SecAggMessageError(f"{stage}: refused: clients {sorted(both)} named both survivor and dropped")
        unknown = (set(survivors) | set(dropped)) - self._masked_with
        if unknown:
            raise SecAggMessageError(f"{stage}: refused: clients {sorted(unknown)} did not share keys this round")
        if me not in survivors:
            raise SecAggMessageError(f"{stage}: refused: client {me} sent a masked input but is not named a survivor")
        if len(survivors) < params.threshold:
            raise SecAggMessageError(f"{stage}: refused: {len(survivors)} survivors, threshold {params.threshold}")

        b_out, sk_out, undecryptable = {str(me): _enc(self._own_shares[0])}, {}, []
        for w in sorted(set(survivors + dropped) - {me}):
            shares = self._open(w)
            if shares is None:
                undecryptable.append(w)  # the server reconstructs w's secret from the others' shares
            elif w in dropped:
                sk_out[str(w)] = _enc(shares[1])
            else:
                b_out[str(w)] = _enc(shares[0])
        return _json({"b_shares": b_out, "sk_shares": sk_out, "undecryptable": undecryptable})

    def _open(self, sender: int) -> tuple[bytes, bytes] | None:
        """This client's shares (of b, of s_sk) from ``sender``'s ciphertext; None if it fails to
        authenticate (tampered in transit or badly sealed) or names other clients."""
        params, me = self.params, self.client_id
        blob = self._ciphertexts[sender]
        key = _agree(self._c_sk, self._public[sender][0], "shares", params.round_num)
        try:
            plaintext = AESGCM(key).decrypt(
                blob[:_NONCE], blob[_NONCE:], _associated_data(params.round_num, sender, me)
            )
        except InvalidTag:
            return None
        if _IDS.unpack_from(plaintext) != (sender, me):
            return None
        rest = plaintext[_IDS.size :]
        return rest[:_KEY_BYTES], rest[_KEY_BYTES:]


# -- server ---------------------------------------------------------------------------------------


@dataclass
class SecureSum:
    """The outcome of one secure sum, and what it cost on the wire."""

    total: np.ndarray
    survivors: list[int]
    dropped: list[int]
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)


def _too_few(stage: str, answered: int, params: SecAggParams) -> AggregationError:
    return AggregationError(
        f"secure aggregation failed at stage {stage!r}: {answered} clients answered validly, "
        f"threshold {params.threshold} (round {params.round_num})"
    )


def secure_sum(params: SecAggParams, exchange: Exchange) -> SecureSum:
    """The server's side: run the four stages through ``exchange`` and return the sum of the
    survivors' clamped vectors. Raises AggregationError when fewer than t clients are left."""
    t, size = params.threshold, params.vector_size
    up: dict[str, int] = {}
    down: dict[str, int] = {}

    def call(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        down[stage] = sum(len(m) for m in messages.values())
        # Answers from clients not asked, or not bytes, are no answers.
        answers = {cid: a for cid, a in exchange(stage, messages).items() if cid in messages and isinstance(a, bytes)}
        up[stage] = sum(len(a) for a in answers.values())
        return answers

    # 1. advertise_keys: a reply without two 32-byte keys is a drop-out.
    stage = "advertise_keys"
    public: dict[int, tuple[bytes, bytes]] = {}
    for cid, answer in call(stage, dict.fromkeys(params.clients, params.to_bytes())).items():
        try:
            obj = _json_object(answer, stage)
            public[cid] = (
                _b64(obj.get("c_pk"), _KEY_BYTES, "c_pk", stage),
                _b64(obj.get("s_pk"), _KEY_BYTES, "s_pk", stage),
            )
        except SecAggMessageError:
            continue
    if len(public) < t:
        raise _too_few(stage, len(public), params)

    # 2. share_keys: each client must send one well-formed ciphertext to every other advertiser.
    stage = "share_keys"
    keys_message = _json({"public_keys": {str(c): [_enc(c_pk), _enc(s_pk)] for c, (c_pk, s_pk) in public.items()}})
    ciphertexts: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> ciphertext
    for cid, answer in call(stage, dict.fromkeys(public, keys_message)).items():
        try:
            sent = _bytes_map(_json_object(answer, stage), "ciphertexts", _CIPHERTEXT_BYTES, stage)
        except SecAggMessageError:
            continue
        if set(sent) == set(public) - {cid}:
            ciphertexts[cid] = sent
    if len(ciphertexts) < t:
        raise _too_few(stage, len(ciphertexts), params)
    # A receiver that dropped in stage 2 still gets nothing it could not have had: the ciphertexts
    # of the stage-2 clients only, so every client masks against the same set.
    shared = sorted(ciphertexts)

    # 3. masked_input: a vector of the wrong length is a drop-out.
    stage = "masked_input"
    routed = {v: _json({"ciphertexts": {str(u): _enc(ciphertexts[u][v]) for u in shared if u != v}}) for v in shared}
    masked: dict[int, np.ndarray] = {}
    for cid, answer in call(stage, routed).items():
        if len(answer) == 8 * size:
            masked[cid] = np.frombuffer(answer, dtype="<u8")
    if len(masked) < t:
        raise _too_few(stage, len(masked), params)
    survivors = sorted(masked)
    dropped = [c for c in shared if c not in masked]

    # 4. unmask: each survivor's share of b_w (survivors) or of s_sk_d (dropped).
    stage = "unmask"
    request = _json({"survivors": survivors, "dropped": dropped})
    b_shares: dict[int, list[tuple[int, bytes]]] = {w: [] for w in survivors}
    sk_shares: dict[int, list[tuple[int, bytes]]] = {d: [] for d in dropped}
    valid = 0
    for cid, answer in call(stage, dict.fromkeys(survivors, request)).items():
        try:
            obj = _json_object(answer, stage)
            b_part = _bytes_map(obj, "b_shares", 2 * _CHUNK, stage)
            sk_part = _bytes_map(obj, "sk_shares", 2 * _CHUNK, stage)
        except SecAggMessageError:
            continue
        if not set(b_part) <= set(survivors) or not set(sk_part) <= set(dropped):
            continue  # shares nobody asked for: the reply is not to be trusted
        valid += 1
        index = params.share_index(cid)
        for w, share in b_part.items():
            b_shares[w].append((index, share))
        for d, share in sk_part.items():
            sk_shares[d].append((index, share))
    if valid < t:
        raise _too_few(stage, valid, params)
    for kind, shares in (("self-mask seed", b_shares), ("mask key", sk_shares)):
        for cid, got in shares.items():
            if len(got) < t:
                raise AggregationError(
                    f"secure aggregation failed at stage 'unmask': {len(got)} shares of client {cid}'s {kind}, "
                    f"threshold {t} (round {params.round_num})"
                )

    total = np.zeros(size, dtype=np.uint64)
    for w in survivors:
        total += masked[w]
        total -= _prg(_combine(b_shares[w][:t]), size)
    for d in dropped:
        try:
            s_sk_d = X25519PrivateKey.from_private_bytes(_combine(sk_shares[d][:t]))
        except ValueError as exc:
            raise AggregationError(f"secure aggregation: client {d}'s mask key did not reconstruct ({exc})") from exc
        for v in survivors:
            mask = _prg(_agree(s_sk_d, public[v][1], "mask", params.round_num), size)
            # v added +PRG(s_vd) if v < d, else -PRG(s_vd): take it back.
            if v < d:
                total -= mask
            else:
                total += mask
    bound = len(survivors) * (2**params.quantization_bits - 1)
    if int(total.max()) > bound:  # inconsistent shares or uploads: masks did not cancel
        raise AggregationError(
            f"secure aggregation: the unmasked sum exceeds {bound} (round {params.round_num}); "
            "some client's masks did not cancel"
        )
    return SecureSum(
        total=dequantize(total, len(survivors), params),
        survivors=survivors,
        dropped=dropped,
        bytes_up=up,
        bytes_down=down,
    )


def local_exchange(clients: Mapping[int, SecAggClient], drop: Mapping[str, set[int]] | None = None) -> Exchange:
    """An in-process Exchange for tests and benches: ``clients[cid].handle(stage, message)``; the
    clients in ``drop[stage]`` do not answer from that stage on."""
    drop = drop or {}
    gone: set[int] = set()

    def exchange(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        gone.update(drop.get(stage, set()))
        return {cid: clients[cid].handle(stage, m) for cid, m in messages.items() if cid not in gone}

    return exchange
