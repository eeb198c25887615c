"""FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS). The new global state is the average of the client states
weighted by each client's number of training samples. With per-task adapters (adapter.per_task)
each key is averaged over the clients that trained it, weighted by the rows they trained it on
(``contributor_average``)."""

from __future__ import annotations

from collections.abc import Sequence

from fedumm.strategies.base import (
    ClientUpdate,
    State,
    Strategy,
    contributor_average,
    sample_weights,
    weighted_average,
)
from fedumm.types import check_state_matches


class FedAvg(Strategy):
    name = "fedavg"
    modes = ("rounds", "one_shot")  # one round of FedAvg: the sample-weighted mean of the uploads
    per_key_weights = True

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        if any(u.key_samples is not None for u in updates):
            aggregated = contributor_average(global_state, updates)
        else:
            aggregated = weighted_average([u.state for u in updates], sample_weights(updates), like=global_state)
        # Guard against clients that all send a layout other than the global adapter's.
        check_state_matches(global_state, aggregated, "aggregated state does not match the global state")
        return aggregated
