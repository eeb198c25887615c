"""Small shared types, defined once, low in the stack: adapter state, dtypes, the label
ignore index, the local-training hooks and result, and the strict key/shape check every
state exchange goes through. Imports torch and ``fedumm.errors`` only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedumm.errors import AdapterStateError

#: Tensors keyed by canonical adapter names (no wrapper prefix, no adapter name).
State = dict[str, torch.Tensor]

#: Config dtype names -> torch dtypes (model.dtype, federation.wire_dtype).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Label value the loss skips (prompt and padding tokens); torch's cross-entropy default.
IGNORE_INDEX = -100


class LocalHooks:
    """Extension points of the local update (FedProx's proximal term, SCAFFOLD's correction);
    the default changes nothing."""

    def extra_loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        return None

    def after_backward(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Gradients are final (unscaled, summed over accumulation), before clipping and the step."""
        return None

    def after_step(self, params: dict[str, torch.nn.Parameter], lr: float) -> None:
        """Right after each optimizer step; ``lr`` is the step's learning rate. Changes to the
        parameters here bypass the optimizer (no clipping, no Adam normalisation)."""
        return None


@dataclass
class TrainResult:
    num_samples: int
    steps: int
    mean_loss: float
    seconds: float
    #: DP-SGD (privacy.level: sample): dp_epsilon so far and dp_noise_multiplier; None otherwise.
    privacy: dict[str, float] | None = None


def describe_keys(keys: set[str], limit: int = 3) -> str:
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def check_state_matches(
    reference: Mapping[str, torch.Tensor | torch.Size], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise ``AdapterStateError`` unless ``state`` has exactly the keys and shapes of ``reference``."""
    missing = set(reference) - set(state)
    unexpected = set(state) - set(reference)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {describe_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {describe_keys(unexpected)}")
        raise AdapterStateError(f"{what}: " + "; ".join(parts))
    for key, tensor in state.items():
        ref = reference[key]
        ref_shape = ref if isinstance(ref, torch.Size) else ref.shape
        if tuple(tensor.shape) != tuple(ref_shape):
            raise AdapterStateError(
                f"{what}: shape mismatch for {key!r}: got {tuple(tensor.shape)}, expected {tuple(ref_shape)}"
            )


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (run seed, round, client)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


def state_delta(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> State:
    """θ − θ_ref for every key of ``reference``, in float32 (a client's update)."""
    return {k: state[k].float() - reference[k].float() for k in reference}
