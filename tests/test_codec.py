import struct

import pytest
import torch

from fedumm import codec
from fedumm.errors import AdapterStateError


def test_round_trip_is_exact_in_float32():
    state = {"a.lora_A.weight": torch.randn(4, 3), "b.lora_B.weight": torch.randn(2, 4)}
    decoded = codec.decode(codec.encode(state))
    assert set(decoded) == set(state)
    for key in state:
        assert torch.equal(decoded[key], state[key])


def test_payload_is_safetensors_with_exact_size():
    # 12 + 8 float32 values = 80 bytes of data after an 8-byte length and a JSON header.
    state = {"a": torch.zeros(4, 3), "b": torch.zeros(2, 4)}
    payload = codec.encode(state)
    (header_len,) = struct.unpack("<Q", payload[:8])
    assert len(payload) == 8 + header_len + 80
    assert payload[8:9] == b"{"  # JSON header, not a pickle stream


def test_half_precision_halves_tensor_bytes_and_decodes_to_float32():
    state = {"w": torch.full((100,), 0.5)}
    full, half = codec.encode(state), codec.encode(state, dtype="float16")
    assert len(full) - len(half) == pytest.approx(200, abs=16)  # 400 -> 200 data bytes
    decoded = codec.decode(half)["w"]
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, state["w"])


def test_garbage_payload_raises_clear_error():
    with pytest.raises(AdapterStateError, match="not a valid safetensors"):
        codec.decode(b"\x80\x04not-safetensors")


def test_message_parts_round_trip_including_empty_parts():
    message = codec.encode_message({"state": {"a.w": torch.ones(2)}, "extras": {}})
    parts = codec.decode_message(message)
    assert set(parts) == {"state", "extras"}
    assert parts["extras"] == {}
    assert torch.equal(parts["state"]["a.w"], torch.ones(2))


def test_message_part_names_cannot_contain_separator():
    with pytest.raises(ValueError, match="must not contain '/'"):
        codec.encode_message({"a/b": {}})
