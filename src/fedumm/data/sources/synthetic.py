"""Source ``synthetic``: the built-in synthetic task (``fedumm.data.synthetic``), train and test splits:
VQA rows (``task: vqa``) or text-to-image rows with GenEval metadata (``task: t2i``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedumm.config_base import Section
from fedumm.data.sources.base import LoadedSamples, SourceSpec
from fedumm.data.synthetic import T2I_TAGS, make_synthetic_t2i, make_synthetic_vqa, t2i_capacity


class SyntheticDataConfig(Section):
    task: Literal["vqa", "t2i"] = Field(
        "vqa",
        description="vqa = questions about the scenes (VQAv2 rows); t2i = text-to-image rows: a prompt, its "
        "rendered scene as the target image, and GenEval metadata (one of its six categories per row).",
    )
    train_samples: int = Field(2000, ge=1, description="Training rows.")
    test_samples: int = Field(400, ge=1, description="Global test rows.")
    image_size: int = Field(
        32, ge=16, le=1024, description="Side of the square images in pixels; shapes are a quarter of it."
    )
    max_count: int = Field(
        3, ge=1, le=10, description="Most copies of a shape in a scene (vqa: 1..max_count; t2i counting: 2..max_count)."
    )
    answer_noise: float = Field(0.1, ge=0, lt=0.5, description="vqa: share of noisy annotator answers.")
    t2i_tags: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(T2I_TAGS, 1),
        description="t2i: GenEval categories and their integer weights (rows cycle through them round robin, each "
        "as often as its weight): single_object, two_object, counting, colors, position, color_attr; a tag left "
        "out gets no rows.",
    )

    task_mix: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Mixed understanding/generation data: the share of text-to-image rows (round(task_mix x n) of "
        "train_samples and of test_samples), the others VQA rows, each tagged with its task (vqa, t2i); "
        "data.tasks says which clients hold which. null = data.synthetic.task alone.",
    )

    @model_validator(mode="after")
    def _check_tags(self) -> SyntheticDataConfig:
        unknown = [t for t in self.t2i_tags if t not in T2I_TAGS]
        if unknown:
            raise ValueError(
                f"data.synthetic.t2i_tags: unknown tag(s) {unknown}; expected some of {', '.join(T2I_TAGS)}"
            )
        negative = {t: w for t, w in self.t2i_tags.items() if w < 0}
        if negative or not any(self.t2i_tags.values()):
            raise ValueError(f"data.synthetic.t2i_tags: weights must be >= 0 with one >= 1, got {self.t2i_tags}")
        if self.task_mix is not None and self.task != "vqa":
            raise ValueError(
                "data.synthetic.task_mix: mixes vqa and t2i rows itself; leave data.synthetic.task at vqa "
                f"(got {self.task})"
            )
        t2i = self.task == "t2i" or bool(self.task_mix)
        if t2i and self.t2i_tags.get("counting", 0) and self.max_count < 2:
            raise ValueError(
                f"data.synthetic.max_count: must be >= 2 for t2i counting prompts (got {self.max_count}); "
                "raise it or give counting weight 0 in data.synthetic.t2i_tags"
            )
        if t2i and self.t2i_tags.get("counting", 0) and self.max_count > t2i_capacity(self.image_size):
            raise ValueError(
                f"data.synthetic.max_count: {self.max_count} shapes do not fit a {self.image_size} px t2i scene "
                f"(at most {t2i_capacity(self.image_size)}); lower it or raise data.synthetic.image_size"
            )
        return self


def load(config: SyntheticDataConfig, seed: int) -> LoadedSamples:
    """The train and test rows of the synthetic task; both splits are drawn from ``seed``. With
    ``task_mix`` each split is its VQA rows (task "vqa") followed by its t2i rows."""
    if config.task_mix is not None:
        return LoadedSamples(*(_mixed(config, n, seed, split) for n, split in _splits(config)))
    if config.task == "t2i":
        kwargs = dict(image_size=config.image_size, max_count=config.max_count, tags=config.t2i_tags)
        train = make_synthetic_t2i(config.train_samples, seed, split="train", **kwargs)
        test = make_synthetic_t2i(config.test_samples, seed, split="test", **kwargs)
        return LoadedSamples(train, test)
    kwargs = dict(image_size=config.image_size, max_count=config.max_count, answer_noise=config.answer_noise)
    train = make_synthetic_vqa(config.train_samples, seed, split="train", **kwargs)
    test = make_synthetic_vqa(config.test_samples, seed, split="test", **kwargs)
    return LoadedSamples(train, test)


def _splits(config: SyntheticDataConfig) -> list[tuple[int, str]]:
    return [(config.train_samples, "train"), (config.test_samples, "test")]


def _mixed(config: SyntheticDataConfig, num_rows: int, seed: int, split: str) -> list[dict]:
    """``num_rows`` rows of one split: round(task_mix x num_rows) t2i rows after the VQA rows."""
    num_t2i = round(float(config.task_mix or 0.0) * num_rows)
    rows: list[dict] = []
    if num_rows - num_t2i:
        vqa = make_synthetic_vqa(
            num_rows - num_t2i,
            seed,
            split=split,
            image_size=config.image_size,
            max_count=config.max_count,
            answer_noise=config.answer_noise,
        )
        rows += [dict(row, task="vqa") for row in vqa]
    if num_t2i:
        kwargs = dict(image_size=config.image_size, max_count=config.max_count, tags=config.t2i_tags)
        rows += make_synthetic_t2i(num_t2i, seed, split=split, **kwargs)
    return rows


SPEC = SourceSpec("synthetic", SyntheticDataConfig, load)
