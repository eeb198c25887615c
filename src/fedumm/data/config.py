"""Config sections for data: sources, partitioning, modality heterogeneity, per-client splits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedumm.config_base import Section

OnError = Literal["raise", "skip"]

_ON_ERROR_DESCRIPTION = (
    "What a broken row (missing or undecodable image, missing field, wrong type) does: "
    "raise = stop with an error naming the file, row and field; skip = drop it and count it."
)
_MAX_SAMPLES_DESCRIPTION = (
    "Cap on source records (rows / conversations), drawn deterministically with the run seed "
    "before images are decoded; null = all."
)


class SyntheticDataConfig(Section):
    train_samples: int = Field(2000, ge=1)
    test_samples: int = Field(400, ge=1)
    image_size: int = Field(32, ge=16, le=1024)
    max_count: int = Field(3, ge=1, le=10)
    answer_noise: float = Field(0.1, ge=0, lt=0.5)


class HFSourceConfig(Section):
    """A Hugging Face dataset with the VQAv2 columns (e.g. HuggingFaceM4/VQAv2)."""

    path: str | None = Field(
        None,
        description="Hub dataset name, a save_to_disk folder, a parquet file, or a folder of data files. "
        "A hub dataset that is only a loading script (e.g. HuggingFaceM4/VQAv2) cannot load with "
        "datasets>=4: use its parquet export (revision: refs/convert/parquet) or a parquet mirror.",
    )
    name: str | None = Field(
        None, description="Dataset configuration (subset) name, as in datasets.load_dataset(path, name)."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit); refs/convert/parquet = the Hub's automatic "
        "parquet export of a script-only dataset.",
    )
    split: str = Field("train", min_length=1, description="Split the clients train on.")
    test_split: str | None = Field(
        "validation",
        description="Split used as the global test set; null = hold out data.global_test_fraction of the train split.",
    )
    data_files: dict[str, list[str]] | None = Field(
        None, description="Split name -> data files (parquet/json/csv), as in datasets.load_dataset."
    )
    max_samples: int | None = Field(None, ge=1, description=_MAX_SAMPLES_DESCRIPTION)
    max_test_samples: int | None = Field(None, ge=1, description="Cap on global test rows; null = all.")
    allow_missing_images: bool = Field(
        False,
        description="A row whose image is null: true = a text-only sample; false = a broken row (on_error).",
    )
    on_error: OnError = Field("raise", description=_ON_ERROR_DESCRIPTION)


class LlavaJsonSourceConfig(Section):
    """A LLaVA-style conversation JSON file (FedVLMBench / FedMLLM client-file format)."""

    path: str | None = Field(None, description="Training JSON file (a list of conversation records).")
    test_path: str | None = Field(
        None, description="Global test JSON file; null = hold out data.global_test_fraction of the training rows."
    )
    image_root: str | None = Field(
        None, description="Folder the records' image paths are relative to; null = the JSON file's folder."
    )
    max_samples: int | None = Field(None, ge=1, description=_MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=_ON_ERROR_DESCRIPTION)


class ClientFilesSourceConfig(Section):
    """Pre-split clients: root/train/client_{i}.json and root/test/*.json (LLaVA JSON)."""

    root: str | None = Field(None, description="Folder holding train/client_{i}.json and test/*.json.")
    image_root: str | None = Field(
        None, description="Folder the records' image paths are relative to; null = root."
    )
    on_error: OnError = Field("raise", description=_ON_ERROR_DESCRIPTION)


class TableSourceConfig(Section):
    """A JSONL or CSV table with columns image (path), question, and answer or answers."""

    format: Literal["fedumm", "hateful_memes"] = Field(
        "fedumm",
        description="fedumm = columns image/images, question, answer/answers; hateful_memes = the Hateful "
        "Memes files (img, text, label 0/1): question = text + 'Is the content hateful based on the text "
        "and image?', answer yes/no, task classification.",
    )
    path: str | None = Field(None, description="Training table (.jsonl or .csv).")
    test_path: str | None = Field(
        None, description="Global test table; null = hold out data.global_test_fraction of the training rows."
    )
    image_root: str | None = Field(
        None, description="Folder the image paths are relative to; null = the table's folder."
    )
    max_samples: int | None = Field(None, ge=1, description=_MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=_ON_ERROR_DESCRIPTION)


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
    num_image_clients: int = Field(
        1, ge=0, description="single: how many clients (the first ones) keep only images."
    )
    image_only_prompt: str | None = Field(
        None,
        description="Question of a sample that lost its text; null = by task (the row's task column, else "
        "eval.task): 'Answer the question about the image.', 'Classify the image. ...', 'Describe the image.'",
    )
    no_modality_prompt: str | None = Field(
        None, description="Question of a sample that lost both image and text; null = by task."
    )


_SOURCE_REQUIRED: dict[str, tuple[str, str]] = {
    "hf": ("hf", "path"),
    "llava_json": ("llava_json", "path"),
    "client_files": ("client_files", "root"),
    "table": ("table", "path"),
}


class DataConfig(Section):
    source: Literal["synthetic", "hf", "llava_json", "client_files", "table"] = Field(
        "synthetic", description="Where samples come from; each source has its own section below."
    )
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    hf: HFSourceConfig = Field(default_factory=HFSourceConfig)
    llava_json: LlavaJsonSourceConfig = Field(default_factory=LlavaJsonSourceConfig)
    client_files: ClientFilesSourceConfig = Field(default_factory=ClientFilesSourceConfig)
    table: TableSourceConfig = Field(default_factory=TableSourceConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    modality: ModalityConfig = Field(default_factory=ModalityConfig)
    local_test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of each client's data held out as its local test split."
    )
    global_test_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the loaded training rows held out as the global test set when the source has "
        "no test data (hf.test_split, llava_json.test_path or table.test_path null).",
    )

    @model_validator(mode="after")
    def _source_is_located(self) -> DataConfig:
        # Checked here so a missing path fails with the config, before any loading starts.
        if self.source in _SOURCE_REQUIRED:
            section, key = _SOURCE_REQUIRED[self.source]
            if getattr(getattr(self, section), key) is None:
                raise ValueError(f"data.{section}.{key}: required when data.source is {self.source!r}")
        return self
