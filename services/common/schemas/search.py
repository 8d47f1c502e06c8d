"""Requests and responses of the search service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from services.common.vocabulary import (
    SCOPES,
    STOPPED,
    FilterRank,
    Scope,
    SearchParameters,
    Stopped,
    TaxonFilter,
    Taxonomy,
    scientific_name,
)

__all__ = ["SCOPES", "STOPPED", "FilterRank", "Scope", "SearchParameters", "Stopped", "TaxonFilter"]


class SearchRequest(SearchParameters):
    """The search parameters, with the query vectors they apply to."""

    # A JSON body is taken as typed: `false` is no record id, "5" no count (the published schema says so).
    model_config = ConfigDict(strict=True)

    vectors: list[list[float]] = Field(
        min_length=1, max_length=16, description="Query vectors (1 to 16), each of the index's dimension."
    )

    @model_validator(mode="after")
    def _same_length(self) -> SearchRequest:
        if len({len(vector) for vector in self.vectors}) > 1:
            raise ValueError("all query vectors must have the same length")
        return self


class Record(Taxonomy):
    """One metadata row, with its source URL rebuilt: a `Taxonomy` and where the record comes from."""

    id: int = Field(description="The record id, which is also its FAISS vector id.")
    uuid: str | None = None
    common_name: str | None = None
    source_dataset: str | None = None
    source_id: str | None = None
    publisher: str | None = None
    img_type: str | None = None
    basis_of_record: str | None = None
    url: str | None = Field(None, description="Where the image is published, or null.")
    has_url: bool = False
    in_bioclip2_training: bool | None = None
    license: str | None = Field(
        None,
        description="The image's licence (dcterms:license: a URI or a name such as CC-BY-4.0), when the metadata "
        "has such a column; else null, and the source's page for the record says it.",
    )
    rights_holder: str | None = Field(None, description="Who holds the image's rights (dcterms:rightsHolder).")
    rights: str | None = Field(None, description="A statement of the image's rights (dcterms:rights).")

    @computed_field(description="Genus and epithet together, when both are known.")  # type: ignore[prop-decorator]
    @property
    def scientific_name(self) -> str | None:
        return scientific_name(self.genus, self.species)

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy.model_validate(self.ranks())


class Hit(BaseModel):
    rank: int = Field(description="1 for the nearest.")
    similarity: float = Field(
        description="Cosine similarity of the query and the record's vector (as the index encodes it: "
        "approximate for PQ codes)."
    )
    record: Record


class QueryReport(BaseModel):
    """What the search did for one query vector."""

    candidates: int = Field(0, description="Nearest neighbours examined in the last round.")
    rounds: int = Field(1, description="Index searches made (1 when the first filled top_n).")
    nprobe: int | None = Field(None, description="IVF lists visited in the last round; null without lists.")
    ef_search: int | None = Field(None, description="HNSW breadth used in the last round; null without HNSW.")
    stopped: Stopped = Field("filled", description="Why the search ended; anything but `filled` may be short.")


class QueryHits(BaseModel):
    hits: list[Hit]
    candidates: int = Field(description="Nearest neighbours examined to fill the hits.")
    exhausted: bool = Field(description="True when fewer than top_n hits matched the scope within the search's reach.")
    search: QueryReport = Field(default_factory=QueryReport, description="What the search did for this query.")


class StageTimings(BaseModel):
    """Milliseconds per stage, all query vectors together."""

    index_ms: float = Field(0.0, description="FAISS searches, every round.")
    screen_ms: float = Field(0.0, description="Judging candidates against the scope and filters.")
    fetch_ms: float = Field(0.0, description="Fetching the hits' rows and applying the caps.")


class SearchResponse(BaseModel):
    results: list[QueryHits] = Field(description="One entry per query vector, in order.")
    top_n: int
    nprobe: int | None = Field(description="IVF lists visited in the first round, null for an index without lists.")
    scope: Scope
    took_ms: float
    timings: StageTimings = Field(default_factory=StageTimings, description="Where took_ms went.")


class RecordVector(BaseModel):
    """A record's stored vector, read back from the index."""

    id: int
    dim: int
    vector: list[float]
    exact: bool = Field(
        description="True when the index stores vectors as they were added (flat encodings); false for "
        "PQ/SQ codes, whose vector is the decoded approximation (not unit length)."
    )
    encoding: str = Field(description="The FAISS index class the vector was decoded from.")


class CollectionPin(BaseModel):
    """Where a downloaded collection came from: its hub repo and the commit pinned in the data folder's lock file."""

    repo: str = Field(description="The hub repo, e.g. imageomics/bioclip-image-search-lite.")
    revision: str = Field(description="The revision asked for (a branch, tag or commit).")
    commit: str = Field(description="The commit the files are from (40 hex digits).")


class Spread(BaseModel):
    """How a set of similarities is spread: how many, and their quantiles (linear interpolation)."""

    count: int = Field(ge=0, description="Similarities measured.")
    p10: float
    p25: float
    median: float
    p75: float
    p90: float


class SimilarityScale(BaseModel):
    """What a similarity means for the model and collection served, measured by the search service on its own
    stored records (services/search/scale.py): a record is searched from its stored vector, as *Search from this*
    does, and its neighbours' rows say whether they are of its species."""

    samples: int = Field(description="Stored records searched from (each with a known genus and species).")
    neighbours: int = Field(description="Nearest neighbours examined per record (itself left out).")
    nprobe: int | None = Field(description="IVF lists visited per search; null without lists.")
    encoding: str = Field(description="The FAISS class the stored vectors were decoded from (approximate for PQ).")
    same_species: Spread = Field(
        description="The nearest other record of the same species, among those found within `neighbours`."
    )
    nearest_other_genus: Spread = Field(description="The nearest record of another genus.")
    other_genera: Spread = Field(description="Pairs of sampled records of different genera: unrelated photos.")


class SearchStats(BaseModel):
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="What finds the nearest vectors: the FAISS file, or a Milvus collection."
    )
    index_type: str = Field(description="The FAISS class (of the IVF inside when wrapped), or `Milvus <index type>`.")
    vectors: int
    dim: int
    nlist: int | None
    default_nprobe: int | None
    metric: str
    metadata_rows: int
    url_layout: Literal["url_prefixes", "identifier", "none"]
    coarse_quantizer: Literal["flat", "hnsw"] | None = Field(
        None, description="How an IVF index picks its lists; null without lists."
    )
    lookup: Literal["sidecar", "duckdb"] = Field(
        "duckdb", description="How candidates are judged: the per-id sidecar, or DuckDB rows."
    )
    reconstruct: bool = Field(True, description="Whether GET /v1/records/{id}/vector can answer.")
    max_candidates: int = Field(10_000, description="Most neighbours one query may examine (the fill bound).")
    max_nprobe: int | None = Field(None, description="Most IVF lists one query may visit (the fill bound).")
    collection: CollectionPin | None = Field(
        None, description="The hub repo and commit of a downloaded collection (`make data`); null for others."
    )
    similarity_scale: SimilarityScale | None = Field(
        None,
        description="What similarities mean for this model and collection, measured on its own records after "
        "start-up; null while being measured, or when it cannot be (no taxonomy, too few records, turned off).",
    )


class TaxonSuggestion(BaseModel):
    """A name the collection holds, at one rank, with how many records carry it."""

    name: str = Field(
        description="As the collection spells it (spelt several ways, the spelling most of its records carry); at "
        "`species`, genus and epithet."
    )
    rank: FilterRank = Field(description="The rank it names (a taxon filter's rank).")
    count: int = Field(ge=0, description="Records carrying this name at this rank.")


class TaxonSuggestions(BaseModel):
    """Names starting with a prefix (compared by the vocabulary's name key), most frequent first."""

    taxa: list[TaxonSuggestion]
    nearest: bool = Field(
        description="True when no name starts with the prefix: these share the longest part of it that some name has."
    )
