"""What a data source is: ``SourceSpec`` (name, config section, required key, load function) and the
``LoadedSamples`` its load function returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from fedumm.config_base import Section
from fedumm.data.rows import LoadResult

# Shared by the sections of the sources that have these keys, so the config reference reads the same.
ON_ERROR_DESCRIPTION = (
    "What a broken row (missing, undecodable or oversized image (data.max_image_pixels), image path outside "
    "image_root, missing field, wrong type) does: "
    "raise = stop with an error naming the file, row and field; skip = drop it and count it."
)
ALLOW_OUTSIDE_ROOT_DESCRIPTION = (
    "Image paths may point outside image_root: false = a path that resolves outside it (.., an absolute "
    "path, a symlink) is a broken row (on_error); true = read it anyway."
)
#: What a file source's rows are: understanding rows (question -> answer) or text-to-image rows.
RowTask = Literal["understanding", "t2i"]
TASK_DESCRIPTION = (
    "What the rows are: understanding = image + question -> answer (VQA, classification, captions); "
    "t2i = text-to-image rows, a prompt -> its target image (fedumm.data.rows.t2i_row)."
)
MAX_SAMPLES_DESCRIPTION = (
    "Cap on source records (rows / conversations), drawn deterministically with the run seed "
    "before images are decoded; null = all."
)


@dataclass(frozen=True)
class LoadedSamples:
    """A source's rows: pooled train and global test, its natural clients if it has them
    (``client_files``: one list per file, ``train`` is their concatenation), and the
    broken rows that were skipped.

    A source without test data returns ``test=None``; ``load_source`` then holds out
    ``data.global_test_fraction`` of ``train`` (so a source never reads that key itself).
    """

    train: list[dict]
    test: list[dict] | None
    natural_clients: list[list[dict]] | None = None
    client_names: list[str] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    natural_tests: list[list[dict]] | None = None  # client_files: test/client_{i}.json per client
    skipped_by_file: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_results(cls, train: LoadResult, test: LoadResult | None) -> LoadedSamples:
        """The train split's and (if any) test split's rows, with their skipped rows summed."""
        loaded = [train] + ([test] if test else [])
        by_file: dict[str, int] = {}
        for result in loaded:  # summed: both splits may come from one file (VQA-RAD)
            for name, count in result.skipped_by_source.items():
                by_file[name] = by_file.get(name, 0) + count
        return cls(
            train=train.rows,
            test=test.rows if test else None,
            skipped=sum(r.skipped for r in loaded),
            problems=[p for r in loaded for p in r.problems],
            skipped_by_file=by_file,
        )


SectionT = TypeVar("SectionT", bound=Section)


@dataclass(frozen=True)
class SourceSpec(Generic[SectionT]):
    """One data source: ``data.source: <name>`` selects it, ``data.<name>.*`` is its ``config``
    section, ``required`` names the section key that must be set when it is selected (None: none),
    and ``load(section, seed)`` reads it."""

    name: str
    config: type[SectionT]
    load: Callable[[SectionT, int], LoadedSamples]
    required: str | None = None

    def __post_init__(self) -> None:
        # The name becomes a config key (data.<name>) next to partition, modality, ...
        if not self.name.isidentifier():
            raise ValueError(f"source name {self.name!r} is not a valid identifier")
        if self.required is not None and self.required not in self.config.model_fields:
            raise ValueError(
                f"source {self.name!r}: required key {self.required!r} is not a field of {self.config.__name__}"
            )
