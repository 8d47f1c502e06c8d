"""The gateway's public request and response models (docs/api.md documents these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, create_model, model_validator
from pydantic.fields import FieldInfo

from services.common import vocabulary
from services.common.schemas.search import CollectionPin, QueryReport, StageTimings
from services.common.vocabulary import Rank, TaxonFilter, scientific_name

__all__ = ["Rank", "TaxonFilter"]


class SearchParameters(vocabulary.SearchParameters):
    """The search parameters, plus what the gateway adds: the prediction's rank. The same for every kind of
    query: form fields beside an upload, a JSON body, a query string. A name it does not know is refused
    (422 naming it), never ignored: `topn` for `top_n` would otherwise search with the default unnoticed."""

    model_config = ConfigDict(extra="forbid")

    rank: Rank = Field("species", description="The rank of the zero-shot prediction and the hits' consensus.")
    predict: bool = Field(True, description="Also predict the query's taxon (zero-shot) at `rank`.")

    def search(self) -> vocabulary.SearchParameters:
        """The part the search service takes, as its model."""
        return vocabulary.SearchParameters.model_validate(
            {name: getattr(self, name) for name in vocabulary.SearchParameters.model_fields}
        )


TEXT_DESCRIPTION = "A taxon or common name; blank once cleaned (empty, spaces, invisible characters) is 400 empty_text."


class QueryRequest(SearchParameters):
    """A JSON search: exactly one of `text`, `record_id` or `query_id`, plus parameters."""

    # No min_length: an empty text is blank like one of spaces or invisible characters, one answer for all
    # (400 empty_text, from the search itself, gateway/searching.py), not a 422 for "" alone.
    text: str | None = Field(None, max_length=300, description=TEXT_DESCRIPTION)
    record_id: int | None = Field(None, ge=0, le=2**31 - 1, description="Search from this record's image.")
    query_id: str | None = Field(
        None, min_length=4, max_length=80, description="A query this gateway embedded before (from a result)."
    )

    @model_validator(mode="after")
    def _exactly_one_query(self) -> QueryRequest:
        given = [name for name in QUERY_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(one_query_message(QUERY_FIELDS, given))
        return self


QUERY_FIELDS = ("text", "record_id", "query_id")


def one_query_message(allowed: tuple[str, ...], given: list[str]) -> str:
    """Why a request names no query, or more than one: which one is allowed and which were given."""
    choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    if not given:
        return f"give one of {choices} (or upload a photo)"
    return f"give only one of {choices}; this request gives {' and '.join(given)}"


class _LinkQuery(BaseModel):
    """What a query string holds besides the search parameters (see `SearchLink`). A name it does not know
    is refused (422 naming it), as in a form or a JSON body."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(None, min_length=4, max_length=80, description="A query id from an earlier result.")
    text: str | None = Field(None, max_length=300, description=TEXT_DESCRIPTION)
    record: int | None = Field(None, ge=0, le=2**31 - 1, description="Search from this record.")
    filter: list[str] = Field(
        default_factory=list,
        max_length=vocabulary.MAX_FILTERS,
        description="A taxon filter as rank:value, e.g. order:Lepidoptera; repeat for several (AND).",
    )
    format: Literal["json", "csv"] | None = Field(
        None,
        description="json (the result, with its provenance) or csv (the hits). Default: by `Accept`, else json.",
    )
    download: bool = Field(False, description="Answer as a file to save.")
    model: str | None = Field(None, description="The model that answered when the link was made (informative).")
    index: str | None = Field(None, description="The index that answered when the link was made (informative).")

    @model_validator(mode="before")
    @classmethod
    def _blanks_are_absent(cls, data: Any) -> Any:
        # A form submitted with an empty field sends `name=`: that means "not given", as in the multipart form.
        # A blank text (empty, spaces, invisible characters: one rule, the vocabulary's `clean`) is absent beside
        # another query; alone it is the query, and the search answers it 400 empty_text as JSON's.
        if not isinstance(data, dict):
            return data
        given = {key: value for key, value in data.items() if value != "" or key == "text"}
        text = given.get("text")
        other_query = any(given.get(name) for name in ("q", "record"))
        if isinstance(text, str) and not vocabulary.clean(text) and other_query:
            del given["text"]
        return given

    @model_validator(mode="after")
    def _exactly_one_query(self) -> _LinkQuery:
        # Checked here, in the query string's own names: QueryRequest would name its JSON fields
        # (record_id, query_id), which a query string does not take.
        given = [name for name in ("q", "text", "record") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(one_query_message(("q", "text", "record"), given))
        if not given:
            raise ValueError("give exactly one of text, record (a record id) or q (a query id)")
        return self


BLANK = {"type": "string", "maxLength": 0, "description": "Blank: the default."}
"""A form field or query parameter sent empty (`top_n=`), which means "not given"."""


def _as_text_field(schema: dict[str, Any]) -> None:
    """A field's JSON schema as a form field or query parameter has it: text has no null (absent is the
    default), and blank is allowed (also the default)."""
    options = [option for option in schema.pop("anyOf", []) if option.get("type") != "null"]
    typed = {**(options[0] if options else {}), **{k: v for k, v in schema.items() if k not in ("default", "title")}}
    default = schema.get("default")
    schema.clear()
    schema["anyOf"] = [typed, BLANK]
    if default is not None:
        schema["default"] = default


_LINK_FIELDS = {**_LinkQuery.model_fields, **SearchParameters.model_fields}
SearchLink = create_model(  # type: ignore[call-overload]
    "SearchLink",
    __base__=_LinkQuery,
    __doc__="GET /api/search's query string: a permalink's fields and the search parameters.",
    **{
        name: (field.annotation, FieldInfo.merge_field_infos(field, json_schema_extra=_as_text_field))
        for name, field in _LINK_FIELDS.items()
        if name not in ("filters", "filter")
    },
)
"""The query string of GET /api/search: `SearchParameters` (filters as repeated `filter=rank:value`), the query
(`q`, `text` or `record`) and the export's `format` and `download`."""


def search_form_schema() -> dict[str, Any]:
    """The multipart form of POST /api/search as JSON schema: the photos (`image`, repeatable), `filter` texts,
    and each other search parameter typed as `SearchParameters` types it. A field left out (or blank) takes its
    default, so the form has no nulls."""
    parameters = SearchParameters.model_json_schema(ref_template="#/components/schemas/{model}")["properties"]
    fields: dict[str, Any] = {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more photos of one organism.",
        },
        "filter": {
            "type": "array",
            "items": {"type": "string"},
            "maxItems": vocabulary.MAX_FILTERS,
            "description": "Taxon filters as rank:value, e.g. order:Lepidoptera.",
        },
    }
    for name, schema in parameters.items():
        if name != "filters":
            _as_text_field(schema)
            fields[name] = schema
    return {"type": "object", "required": ["image"], "properties": fields}


class Taxonomy(vocabulary.Taxonomy):
    """A record's taxonomy, with the names people search by."""

    common_name: str | None = None

    @computed_field(description="Genus and epithet together, when both are known.")  # type: ignore[prop-decorator]
    @property
    def scientific_name(self) -> str | None:
        return scientific_name(self.genus, self.species)


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
    license: str | None = Field(
        None,
        description="The image's licence, when the collection's metadata has a licence column (dcterms:license); "
        "null otherwise: the source's page for the record (`source_record_url`) says it.",
    )
    rights_holder: str | None = Field(None, description="Who holds the image's rights (dcterms:rightsHolder).")
    rights: str | None = Field(None, description="A statement of the image's rights (dcterms:rights).")
    image_url: str | None = Field(None, description="The original image where it is published.")
    source_record_url: str | None = Field(None, description="The source's page for the record, when known.")
    thumbnail_url: str | None = Field(None, description="The gateway's thumbnail of the image, by record id.")
    medium_url: str | None = Field(None, description="The gateway's larger rendition of the image.")


class HitView(RecordView):
    rank: int
    similarity: float


class Prediction(BaseModel):
    name: str
    rank: Rank
    probability: float
    common_name: str | None = None
    taxonomy: vocabulary.Taxonomy | None = Field(None, description="The taxon's ranks above it, when known.")


class PredictionResult(BaseModel):
    rank: Rank
    predictions: list[Prediction] = Field(description="The most probable taxa at `rank`, most probable first.")
    within: TaxonFilter | None = Field(
        None,
        description="The query's taxon filter the prediction was made within: the most specific of its filters at "
        "or above `rank` (kingdom .. genus). Null when no filter restricts it: the prediction is over every label.",
    )
    filters_not_applied: list[TaxonFilter] = Field(
        default_factory=list,
        description="The query's filters that do not restrict the prediction: those below `rank`, on species or "
        "on common_name (the labels are grouped by the ranks above species only).",
    )


class Consensus(BaseModel):
    rank: Rank
    name: str
    share: float = Field(description="The taxon's part of the hits' total similarity, 0 to 1.")
    hits: int = Field(description="Hits of that taxon.")
    unknown: int = Field(0, description="Hits that do not know this rank (they count in the share's total).")


class TreeNode(BaseModel):
    """One taxon of the hits' tree. Every hit passes through one node at each rank, kingdom to species."""

    rank: Rank
    name: str | None = Field(description="The taxon's name; null for the hits that do not know this rank.")
    count: int = Field(description="Hits under this node: the sum of its children's counts.")
    children: list[TreeNode]


class Identity(BaseModel):
    """What produced the hits, so a permalink can tell when the system has changed under it."""

    model: str | None
    index: str | None


class SearchResult(QueryReport):
    """One search's answer, flat: what the search service did for this query (`candidates`, `rounds`,
    `nprobe`, `ef_search`, `stopped`: its per-query report, defined once in services/common) beside the
    hits and what the gateway adds."""

    query: Literal["image", "text", "record"]
    query_id: str = Field(description="Re-run with other parameters by sending this instead of the query.")
    label: str = Field(description="What the query was: file names, the text, or the record.")
    text: str | None = None
    parameters: SearchParameters
    exhausted: bool = Field(description="True when fewer than top_n records matched within the search's reach.")
    hits: list[HitView]
    prediction: PredictionResult | None = Field(description="Zero-shot prediction; null when not asked or unavailable.")
    prediction_error: str | None = Field(None, description="Why there is no prediction, when it was asked for.")
    consensus: Consensus | None = Field(description="The hits' similarity-weighted vote at `rank`.")
    agreement: bool | None = Field(description="Whether the top prediction and the consensus name the same taxon.")
    tree: list[TreeNode] = Field(description="The hits' taxonomy, with counts.")
    identity: Identity
    permalink: str = Field(description="A page URL that reproduces this search.")
    timings: StageTimings = Field(description="The search service's milliseconds per stage.")
    took_ms: float = Field(description="The whole search at the gateway, embedding included when it happened.")


class Provenance(BaseModel):
    """What an export is cited by: the query, what answered it, and when."""

    exported_at: str = Field(description="When the export was made, ISO 8601 in UTC.")
    query: Literal["image", "text", "record"]
    query_id: str
    label: str = Field(description="The text, `record N`, or the uploaded files' names.")
    parameters: SearchParameters
    model: str | None = Field(description="The embedder's model (as in `identity`).")
    index: str | None = Field(description="The index (as in `identity`).")
    collection: CollectionPin | None = Field(description="The collection's hub repo and commit, when downloaded.")


class Export(SearchResult):
    """GET /api/search?format=json: the search result with its provenance."""

    provenance: Provenance


class ReplicaHealth(BaseModel):
    ready: bool
    url: str | None = Field(None, description="The replica's base URL (GET /internal/health only).")
    reason: str | None = None


class ServiceHealth(BaseModel):
    ready: bool = Field(description="At least one replica is ready.")
    url: str | None = Field(None, description="The service's base URL(s), as set (GET /internal/health only).")
    reason: str | None = None
    replicas: list[ReplicaHealth] = Field(
        default_factory=list, description="Each replica the gateway spreads calls over (one unless scaled)."
    )


class GatewayHealth(BaseModel):
    status: Literal["ok", "degraded"]
    services: dict[str, ServiceHealth]


class Info(BaseModel):
    notice: str = Field(description="A line to show above the page (empty for none).")
    model: dict[str, object] | None = Field(description="The embedder's /v1/model, or null if it is down.")
    index: dict[str, object] | None = Field(description="The search service's /v1/stats, or null if it is down.")
