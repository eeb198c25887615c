"""Source ``synthetic``: the built-in synthetic VQA task (``fedumm.data.synthetic``), train and test splits."""

from __future__ import annotations

from pydantic import Field

from fedumm.config_base import Section
from fedumm.data.sources.base import LoadedSamples, SourceSpec
from fedumm.data.synthetic import make_synthetic_vqa


class SyntheticDataConfig(Section):
    train_samples: int = Field(2000, ge=1)
    test_samples: int = Field(400, ge=1)
    image_size: int = Field(32, ge=16, le=1024)
    max_count: int = Field(3, ge=1, le=10)
    answer_noise: float = Field(0.1, ge=0, lt=0.5)


def load(config: SyntheticDataConfig, seed: int) -> LoadedSamples:
    """The train and test rows of the synthetic task; both splits are drawn from ``seed``."""
    kwargs = dict(image_size=config.image_size, max_count=config.max_count, answer_noise=config.answer_noise)
    train = make_synthetic_vqa(config.train_samples, seed, split="train", **kwargs)
    test = make_synthetic_vqa(config.test_samples, seed, split="test", **kwargs)
    return LoadedSamples(train, test)


SPEC = SourceSpec("synthetic", SyntheticDataConfig, load)
