"""Fine-tuning strategies: which parts of the model train, and which of those travel.

A model is cut into *units*: ``lora`` (the LoRA adapter tensors) and the backend's module
groups: ``vision``, ``connector`` and ``language`` (full weights of those modules), and any a
backend adds (Janus's generation path: ``gen_embed``, ``gen_aligner``, ``gen_head``), which
``finetune.groups`` names like the standard ones (``fedumm.validation`` checks the names
against the backend). Each unit is, in a given round, one of:

* ``frozen``: not trained;
* ``share``: trained locally and sent to the server for aggregation;
* ``local``: trained and kept on the client across rounds (personalisation), never sent.

The named presets are FedVLMBench's four strategies (Zhang et al. 2025, "FedVLMBench:
Benchmarking Federated Fine-Tuning of Vision-Language Models"): ``lora`` (F-L, LoRA on the
LLM), ``connector`` (F-C, projector only), ``lora+connector`` (F-CL), ``two_stage``
(F-2stage: the connector for the first ``two_stage_rounds`` rounds, then LoRA). ``custom``
takes the per-unit modes from ``finetune.groups``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedumm.config import FinetuneConfig

Mode = Literal["frozen", "share", "local"]
#: Units every plan lists (in this order), before the backend-defined groups a config names.
STANDARD_UNITS: tuple[str, ...] = ("lora", "vision", "connector", "language")

_PRESETS: dict[str, dict[str, Mode]] = {
    "lora": {"lora": "share"},
    "connector": {"connector": "share"},
    "lora+connector": {"lora": "share", "connector": "share"},
}


@dataclass(frozen=True)
class RoundPlan:
    """Mode of every unit in one round."""

    modes: dict[str, Mode]

    def units(self, *modes: Mode) -> list[str]:
        return [u for u, mode in self.modes.items() if mode in modes]

    @property
    def trained(self) -> list[str]:
        return self.units("share", "local")

    @property
    def shared(self) -> list[str]:
        return self.units("share")


def all_units(config: FinetuneConfig) -> list[str]:
    """The standard units, then the backend-defined groups ``finetune.groups`` names."""
    return list(STANDARD_UNITS) + [g for g in config.groups if g not in STANDARD_UNITS]


def plan_for_round(config: FinetuneConfig, round_num: int) -> RoundPlan:
    if config.strategy == "custom":
        modes = dict(config.groups)
    elif config.strategy == "two_stage":
        modes = {"connector": "share"} if round_num <= config.two_stage_rounds else {"lora": "share"}
    else:
        modes = dict(_PRESETS[config.strategy])
    return RoundPlan({u: modes.get(u, "frozen") for u in all_units(config)})


def units_over_run(config: FinetuneConfig, rounds: int, *modes: Mode) -> list[str]:
    """Units that are in one of ``modes`` in at least one round (round 0 = evaluation only)."""
    seen = {u for r in range(1, rounds + 1) for u in plan_for_round(config, r).units(*modes)}
    return [u for u in all_units(config) if u in seen]


def stages(config: FinetuneConfig, rounds: int) -> list[tuple[int, int, RoundPlan]]:
    """Consecutive rounds with the same plan: (first round, last round, plan); one stage for
    every strategy but two_stage (rounds 1..two_stage_rounds, then the rest)."""
    out: list[tuple[int, int, RoundPlan]] = []
    for r in range(1, rounds + 1):
        plan = plan_for_round(config, r)
        if out and out[-1][2] == plan:
            out[-1] = (out[-1][0], r, plan)
        else:
            out.append((r, r, plan))
    return out
