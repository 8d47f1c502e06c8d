"""The gateway's public request and response models (docs/api.md documents these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.common.schemas.search import Scope


class SearchParameters(BaseModel):
    """Parameters shared by every kind of query; as form fields beside an upload, or in a JSON body."""

    top_n: int = Field(10, ge=1, le=200, description="Hits to return.")
    nprobe: int | None = Field(None, ge=1, le=65536, description="IVF lists to visit (search's default if unset).")
    scope: Scope = Field("all", description="Which records may be hits.")


class TextSearchRequest(SearchParameters):
    text: str = Field(min_length=1, max_length=300, description="A taxon or common name, embedded as text.")


class Taxonomy(BaseModel):
    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = Field(None, alias="class")
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = Field(None, description="The species epithet.")
    scientific_name: str | None = None
    common_name: str | None = None

    model_config = {"populate_by_name": True}


class RecordView(BaseModel):
    """A record as the page and API clients see it: taxonomy, source, and links."""

    record_id: int
    uuid: str | None = None
    taxonomy: Taxonomy
    source_dataset: str | None = None
    source_id: str | None = None
    publisher: str | None = None
    img_type: str | None = None
    basis_of_record: str | None = None
    in_bioclip2_training: bool | None = None
    image_url: str | None = Field(None, description="The original image where it is published.")
    source_record_url: str | None = Field(None, description="The source's page for the record, when known.")
    thumbnail_url: str | None = Field(None, description="The gateway's thumbnail of the image, by record id.")
    medium_url: str | None = Field(None, description="The gateway's larger rendition of the image.")


class HitView(RecordView):
    rank: int
    similarity: float


class SearchResult(BaseModel):
    query: Literal["image", "text"]
    text: str | None = None
    top_n: int
    nprobe: int | None
    scope: Scope
    exhausted: bool = Field(description="True when fewer than top_n records matched the scope within reach.")
    hits: list[HitView]
    took_ms: float


class ServiceHealth(BaseModel):
    ready: bool
    url: str
    reason: str | None = None


class GatewayHealth(BaseModel):
    status: Literal["ok", "degraded"]
    services: dict[str, ServiceHealth]


class Info(BaseModel):
    notice: str = Field(description="A line to show above the page (empty for none).")
    model: dict[str, object] | None = Field(description="The embedder's /v1/model, or null if it is down.")
    index: dict[str, object] | None = Field(description="The search service's /v1/stats, or null if it is down.")
