"""Tests for the synthetic source (fedumm.data.sources.synthetic): the default data config."""

from __future__ import annotations

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data
from fedumm.data.modality import BOTH, modality_of


def test_synthetic_default_unchanged_by_new_sections() -> None:
    # Prepare / Execute
    config = DataConfig()
    data = build_federated_data(
        DataConfig.model_validate({"synthetic": {"train_samples": 80, "test_samples": 8}}), num_clients=2, seed=0
    )
    # Assert: the defaults stay the synthetic Dirichlet(0.5) job without modality changes.
    assert (config.source, config.partition.method, config.partition.alpha) == ("synthetic", "dirichlet", 0.5)
    assert (config.modality.scenario, config.hf.on_error) == ("none", "raise")
    assert data.skipped_rows == 0 and sum(data.partition.sizes) == 80
    assert all(modality_of(r) == BOTH for r in data.pooled_train)
