"""Requests and responses of the embedder service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from services.common.vocabulary import CladeRank, Rank, Taxonomy, clean

Preprocessing = Literal["pybioclip", "open_clip"]


class EmbedResponse(BaseModel):
    model: str = Field(description="The model that made the vectors.")
    dim: int = Field(description="Length of each vector.")
    count: int
    vectors: list[list[float]] = Field(description="L2-normalised float32 vectors, in input order.")


class TextEmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=256, description="Texts to embed, 1 to 256.")


class ModelInfo(BaseModel):
    model: str = Field(description="Hub name or architecture name the model was loaded as.")
    architecture: str
    checkpoint: str | None = Field(description="Local checkpoint file, when loaded from one.")
    pretrained: bool = Field(description="False when running with random weights (benchmarks, demo).")
    dim: int
    image_size: int
    preprocessing: Preprocessing
    preprocessing_steps: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str
    precision: str = Field(description="What the model runs in: fp32, bf16, fp16 or int8.")
    precision_requested: str | None = Field(None, description="EMBEDDER_PRECISION as set (auto or a precision).")
    precision_reason: str | None = Field(None, description="Why this precision: the setting, or auto's reasoning.")
    cpu_capability: str | None = Field(
        None, description="The vector ISA PyTorch's CPU kernels dispatch to (DEFAULT, AVX2, AVX512, ...)."
    )
    precision_probe_ms: dict[str, float] | None = Field(
        None,
        description="auto's start-up probe: ms for one of the model's transformer blocks at batch 1, per candidate "
        "precision (the fastest of three runs); null when nothing was probed.",
    )
    precision_probe_seconds: float | None = Field(None, description="How long the probe took at start-up, in s.")
    parameters: int
    torch_threads: int | None = Field(None, description="torch intra-op threads in use.")
    max_batch_size: int | None = Field(None, description="Most images in one forward pass.")
    max_batch_wait_ms: float | None = Field(None, description="How long a forward pass waits for company.")
    logit_scale: float | None = Field(None, description="exp(the model's logit scale): classify's softmax scale.")
    tree_of_life_labels: int | None = Field(
        None, description="TreeOfLife species labels loaded for POST /v1/classify; null when none are configured."
    )


class Clade(BaseModel):
    """Predict only within this clade, e.g. {"rank": "class", "value": "Insecta"} (or the string "class:Insecta")."""

    rank: CladeRank = Field(description="A rank above the one predicted.")
    value: str = Field(min_length=1, max_length=200, description="The clade's name at that rank (any case).")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object) -> object:
        if isinstance(data, str):
            rank, sep, value = data.partition(":")
            if not sep:
                raise ValueError('a clade as text is "rank:name", e.g. "class:Insecta"')
            return {"rank": rank.strip().lower(), "value": clean(value)}
        return data


class ClassifyParameters(BaseModel):
    """What to predict; the same fields go as form fields beside uploaded images."""

    rank: Rank | None = Field(
        None, description="Rank to predict (TreeOfLife labels only): kingdom .. species. Default: species."
    )
    k: int = Field(5, ge=1, le=100, description="Predictions per input, most probable first.")
    labels: list[str] | None = Field(
        None,
        min_length=2,
        max_length=1000,
        description="Classify among these labels instead of the TreeOfLife species (at most "
        "EMBEDDER_MAX_LABELS_PER_REQUEST; each label's text vector is cached).",
    )
    clade: Clade | None = Field(None, description="Predict only within this clade (TreeOfLife labels only).")

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyParameters:
        if self.labels is not None:
            cleaned = [label.strip() for label in self.labels]
            if not all(cleaned):
                raise ValueError("labels must not be blank")
            if len(set(cleaned)) != len(cleaned):
                raise ValueError("labels must be distinct")
            if any(len(label) > 300 for label in cleaned):
                raise ValueError("a label is longer than 300 characters")
            self.labels = cleaned
            if self.rank is not None or self.clade is not None:
                raise ValueError("rank and clade apply to the TreeOfLife labels, not to a label list")
        return self


class ClassifyRequest(ClassifyParameters):
    """JSON body of POST /v1/classify: one vector (`vector`) or several (`vectors`) already embedded."""

    vector: list[float] | None = Field(None, description="One image vector, from POST /v1/embed/image.")
    vectors: list[list[float]] | None = Field(None, min_length=1, max_length=32, description="1 to 32 image vectors.")

    @model_validator(mode="after")
    def _one_input(self) -> ClassifyRequest:
        if (self.vector is None) == (self.vectors is None):
            raise ValueError("send exactly one of `vector` or `vectors`")
        return self

    def input_vectors(self) -> list[list[float]]:
        return [self.vector] if self.vector is not None else list(self.vectors or [])


class Prediction(BaseModel):
    name: str = Field(description="The taxon's name at its rank (genus + epithet for a species), or the label.")
    rank: Rank | None = Field(description="The rank predicted; null for a request's own labels.")
    taxonomy: Taxonomy | None = Field(description="Kingdom .. rank, for TreeOfLife predictions; else null.")
    common_name: str | None = Field(description="The species' common name, when the TreeOfLife data has one.")
    probability: float = Field(description="Probability (0..1); a rank above species sums its species'.")


class ClassifyResult(BaseModel):
    predictions: list[Prediction] = Field(description="At most k, most probable first.")
    vector: list[float] | None = Field(
        None, description="The image's vector, for image input (so it need not be embedded again); else null."
    )


class ClassifyResponse(BaseModel):
    model: str
    labels: Literal["tree_of_life", "request"] = Field(description="Where the labels came from.")
    rank: Rank | None = Field(description="The rank predicted (null for a request's own labels).")
    k: int
    clade: Clade | None
    results: list[ClassifyResult] = Field(description="One entry per input vector or image, in order.")
