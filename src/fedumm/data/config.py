"""Config sections for data: sources, partitioning, per-client splits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedumm.config_base import Section


class SyntheticDataConfig(Section):
    train_samples: int = Field(2000, ge=1)
    test_samples: int = Field(400, ge=1)
    image_size: int = Field(32, ge=16, le=1024)
    max_count: int = Field(3, ge=1, le=10)
    answer_noise: float = Field(0.1, ge=0, lt=0.5)


class PartitionConfig(Section):
    alpha: float = Field(
        0.5, ge=0, description="Dirichlet concentration; 0 = IID (as in FedUMM), small = skewed."
    )
    label_column: str = Field("multiple_choice_answer", description="Column the skew is over.")
    min_samples: int = Field(8, ge=1, description="Minimum training samples per client.")


class DataConfig(Section):
    source: Literal["synthetic"] = Field("synthetic", description="Where samples come from.")
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    local_test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of each client's data held out as its local test split."
    )
