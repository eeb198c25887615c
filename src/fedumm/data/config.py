"""Config sections for data: the source sections (one per registered source), partitioning, modality
heterogeneity, per-client splits.

``DataConfig`` is built from the source registry (``fedumm.data.sources``): ``data.source`` names a
registered source and each source contributes its section, ``data.<name>``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from fedumm.config_base import Section
from fedumm.data.images import DEFAULT_MAX_IMAGE_PIXELS
from fedumm.data.sources import SourceSpec, available_sources, get_source, unknown_source_message

# Importable from here as before the registry (fedumm.config imports it from here).
from fedumm.data.sources.synthetic import SyntheticDataConfig

__all__ = ["DataConfig", "ModalityConfig", "PartitionConfig", "SyntheticDataConfig", "data_config_model"]


class PartitionConfig(Section):
    method: Literal["iid", "dirichlet", "shards", "quantity_skew", "natural"] = Field(
        "dirichlet",
        description="iid; dirichlet = label skew (alpha 0 still means IID); shards = k labels per client; "
        "quantity_skew = Dirichlet client sizes, IID labels; natural = one client per value of column. "
        "Ignored for data.source client_files (its files are the clients).",
    )
    alpha: float = Field(
        0.5,
        ge=0,
        description="Dirichlet concentration (dirichlet: over labels, 0 = IID as in FedUMM; quantity_skew: over "
        "client sizes, must be > 0); small = skewed.",
    )
    label_column: str = Field("multiple_choice_answer", description="Column the skew is over.")
    min_samples: int = Field(
        8,
        ge=1,
        description="Minimum training samples per client, after its local test split "
        "(data.local_test_fraction) is held out.",
    )
    shards_per_client: int = Field(
        2, ge=1, le=1000, description="shards: label shards per client, so each client sees at most this many labels."
    )
    column: str | None = Field(
        None,
        description="natural: column whose distinct values are the clients (e.g. site); looked up in the row, "
        "then in its metadata.",
    )

    @model_validator(mode="after")
    def _method_needs(self) -> PartitionConfig:
        if self.method == "natural" and not self.column:
            raise ValueError("data.partition.column: required when data.partition.method is 'natural'")
        if self.method == "quantity_skew" and self.alpha == 0:
            raise ValueError("data.partition.alpha: must be > 0 when data.partition.method is 'quantity_skew'")
        return self


class ModalityConfig(Section):
    """Modality heterogeneity across clients (FedMLLM, Xu et al. 2024, arXiv:2411.14717)."""

    scenario: Literal["none", "missing", "single", "mix"] = Field(
        "none",
        description="none; missing = each sample drops its image with prob. rate and, independently, its "
        "text with prob. rate (rate^2 lose both and keep only the instruction); single = the first "
        "num_image_clients clients are image-only, the rest text-only; mix = each client holds each "
        "modality with prob. 1 - rate, drawn once (a client drawing neither gets image or text per sample).",
    )
    rate: float = Field(0.5, ge=0, le=1, description="missing / mix: probability that a modality is dropped.")
    num_image_clients: int = Field(1, ge=0, description="single: how many clients (the first ones) keep only images.")
    image_only_prompt: str | None = Field(
        None,
        description="Question of a sample that lost its text; null = by task (the row's task column, else "
        "eval.task): 'Answer the question about the image.', 'Classify the image. ...', 'Describe the image.'",
    )
    no_modality_prompt: str | None = Field(
        None, description="Question of a sample that lost both image and text; null = by task."
    )


class _DataConfigChecks(Section):
    """The checks of ``DataConfig``; its fields are added by ``data_config_model``."""

    @field_validator("source", check_fields=False)
    @classmethod
    def _source_is_registered(cls, name: str) -> str:
        # Only sources this model has a section for (a source registered after it was built has none).
        names = [n for n in available_sources() if n in cls.model_fields]
        if name not in names:
            # The message names its key, so the config error prints it as is: give the value too.
            raise ValueError(f"{unknown_source_message(names)} (got {name!r})")
        return name

    @field_validator("tasks", check_fields=False)
    @classmethod
    def _tasks_not_empty(cls, tasks: list[list[str]] | None) -> list[list[str]] | None:
        for cid, held in enumerate(tasks or []):
            if not held:
                raise ValueError(f"data.tasks[{cid}]: client {cid} holds no task; list at least one")
            if len(set(held)) != len(held):
                raise ValueError(f"data.tasks[{cid}]: lists a task twice: {held}")
        return tasks

    @model_validator(mode="after")
    def _source_is_located(self) -> _DataConfigChecks:
        # Checked here so a missing path fails with the config, before any loading starts.
        spec = get_source(self.source)
        if spec.required is not None and getattr(getattr(self, spec.name), spec.required) is None:
            raise ValueError(f"data.{spec.name}.{spec.required}: required when data.source is {self.source!r}")
        return self


# Keys of DataConfig besides the source sections; a source cannot take one of these names.
_SHARED_FIELDS: dict[str, Any] = {
    "partition": (PartitionConfig, Field(default_factory=PartitionConfig)),
    "modality": (ModalityConfig, Field(default_factory=ModalityConfig)),
    "local_test_fraction": (
        float,
        Field(0.2, ge=0, lt=1, description="Share of each client's data held out as its local test split."),
    ),
    "global_test_fraction": (
        float,
        Field(
            0.1,
            gt=0,
            lt=1,
            description="Share of the loaded training rows held out as the global test set when the source has "
            "no test data (hf.test_split, llava_json.test_path or table.test_path null).",
        ),
    ),
    "tasks": (
        list[list[str]] | None,
        Field(
            None,
            description="Mixed federations: the tasks each client holds, one list per client (e.g. [[vqa], [vqa], "
            "[t2i], [vqa, t2i]]); each task's rows (a row's task column, vqa when absent) are partitioned "
            "(data.partition) among the clients that hold it only. Per source, data.<source>.task (and "
            "data.synthetic.task_mix) sets which rows there are. null = every client draws from all rows.",
        ),
    ),
    "max_image_pixels": (
        int | None,
        Field(
            DEFAULT_MAX_IMAGE_PIXELS,
            ge=1,
            description="Largest image (width x height) a source may load, checked from the file's header before "
            "it is decoded; a larger one (e.g. a decompression bomb) is a broken row (on_error). 50,000,000 "
            "decode to 150 MB; null = PIL's own limit (PIL.Image.MAX_IMAGE_PIXELS, about 89 million).",
        ),
    ),
}


def data_config_model(specs: list[SourceSpec], name: str = "DataConfig") -> type[_DataConfigChecks]:
    """The ``data`` section model for ``specs``: ``source``, one section per spec, then the shared keys
    (in this order, which is the order of config dumps)."""
    taken = {"source", *_SHARED_FIELDS}
    clashing = [spec.name for spec in specs if spec.name in taken]
    if clashing:
        raise ValueError(f"data source name(s) {clashing} clash with data.* keys {sorted(taken)}")
    sections = {spec.name: (spec.config, Field(default_factory=spec.config)) for spec in specs}
    source = (
        str,
        Field(
            "synthetic",
            description="Where samples come from; each source has its own section below.",
            json_schema_extra={"enum": [spec.name for spec in specs]},  # the schema lists the choices, as a Literal's
        ),
    )
    return create_model(
        name, __base__=_DataConfigChecks, __module__=__name__, source=source, **sections, **_SHARED_FIELDS
    )


DataConfig = data_config_model([get_source(name) for name in available_sources()])
