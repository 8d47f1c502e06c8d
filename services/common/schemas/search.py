"""Requests and responses of the search service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

Scope = Literal["all", "url_only", "inaturalist", "bioclip2_training"]

SCOPES: dict[str, str] = {
    "all": "every record",
    "url_only": "records whose image has a source URL",
    "inaturalist": "records with a URL published by iNaturalist through GBIF",
    "bioclip2_training": "records BioCLIP-2 was trained on",
}


class SearchRequest(BaseModel):
    vectors: list[list[float]] = Field(
        min_length=1, max_length=16, description="Query vectors (1 to 16), each of the index's dimension."
    )
    top_n: int = Field(10, ge=1, le=200, description="Hits per query vector.")
    nprobe: int | None = Field(
        None, ge=1, le=65536, description="IVF lists to visit; clamped to the index's nlist. Default: the service's."
    )
    scope: Scope = Field("all", description="Which records may be hits.")

    @model_validator(mode="after")
    def _same_length(self) -> SearchRequest:
        if len({len(vector) for vector in self.vectors}) > 1:
            raise ValueError("all query vectors must have the same length")
        return self


class Record(BaseModel):
    """One metadata row, with its source URL rebuilt."""

    id: int = Field(description="The record id, which is also its FAISS vector id.")
    uuid: str | None = None
    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = Field(None, alias="class")
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = Field(None, description="The species epithet only, as in the TreeOfLife data.")
    scientific_name: str | None = Field(None, description="Genus and epithet together, when both are known.")
    common_name: str | None = None
    source_dataset: str | None = None
    source_id: str | None = None
    publisher: str | None = None
    img_type: str | None = None
    basis_of_record: str | None = None
    url: str | None = Field(None, description="Where the image is published, or null.")
    has_url: bool = False
    in_bioclip2_training: bool | None = None

    model_config = {"populate_by_name": True}


class Hit(BaseModel):
    rank: int = Field(description="1 for the nearest.")
    similarity: float = Field(description="Cosine similarity of the query and the record's vector.")
    record: Record


class QueryHits(BaseModel):
    hits: list[Hit]
    candidates: int = Field(description="Nearest neighbours examined to fill the hits.")
    exhausted: bool = Field(description="True when fewer than top_n hits matched the scope within the search's reach.")


class SearchResponse(BaseModel):
    results: list[QueryHits] = Field(description="One entry per query vector, in order.")
    top_n: int
    nprobe: int | None = Field(description="IVF lists visited, null for an index without lists.")
    scope: Scope
    took_ms: float


class SearchStats(BaseModel):
    index_type: str
    vectors: int
    dim: int
    nlist: int | None
    default_nprobe: int | None
    metric: str
    metadata_rows: int
    url_layout: Literal["url_prefixes", "identifier", "none"]
