"""The field's terms, defined once: ranks, names and their normalisation, taxon filters, scopes, image sizes,
why a search stopped, and the search parameters with their defaults and bounds.

Every service, the collection builder and the page (through `GET /api/vocabulary`) derive from this
module; it imports no web framework. Where a rule comes from: the ranks and the epithet-only `species`
column are the TreeOfLife-200M metadata's; the scientific name is the binomial (ICZN/ICN) written from
them; the normalisation is Unicode's (NFC, default case folding) plus whitespace collapsing.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator

logger = logging.getLogger(__name__)

# --- Ranks -------------------------------------------------------------------------------------------

Rank = Literal["kingdom", "phylum", "class", "order", "family", "genus", "species"]
RANKS: tuple[str, ...] = get_args(Rank)
"""Kingdom to species, broad to specific (the TreeOfLife columns; `species` holds the epithet only)."""
# A filter may also name a record's common name.
FilterRank = Literal[Rank, "common_name"]
FILTER_RANKS: tuple[str, ...] = get_args(FilterRank)
# A clade restricting a prediction lies above species.
CladeRank = Literal[RANKS[:-1]]  # type: ignore[valid-type]
CLADE_RANKS: tuple[str, ...] = RANKS[:-1]

# --- Names -------------------------------------------------------------------------------------------

# Characters that print as nothing are dropped, so a pasted name equals a typed one: format characters
# (zero-width space and joiners, BOM, soft hyphen, bidi marks), controls other than whitespace,
# surrogates, private-use and unassigned code points (Unicode categories Cc, Cf, Cs, Co, Cn).


def clean(text: str) -> str:
    """A name or query as shown and sent: NFC, invisible characters dropped, whitespace runs one space, trimmed.

    Case is kept. An empty result means the text held nothing visible.
    """
    if text.isascii() and text.isprintable():
        return " ".join(text.split())  # the common case, without the per-character pass
    if not text.isprintable():
        # Python's non-printable characters are exactly the categories above plus the separators,
        # which are whitespace and kept. Dropped before composing, so the result is NFC.
        text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
    return " ".join(unicodedata.normalize("NFC", text).split())


def name_key(text: str) -> str:
    """What two names are compared by: `clean`, then Unicode default case folding on the canonical
    decomposition, recomposed (NFC). Equal keys for NFC and NFD forms and for any case; idempotent.

    Used the same way for stored names (sidecar taxa, DuckDB rows), filters and text queries.
    """
    if text.isascii() and text.isprintable():
        return " ".join(text.split()).lower()  # ASCII: case folding is lower-casing
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", clean(text)).casefold())


def scientific_name(genus: str | None, epithet: str | None) -> str | None:
    """The binomial "Genus epithet"; None unless both are known (a lone epithet names nothing)."""
    genus, epithet = (genus or "").strip(), (epithet or "").strip()
    return f"{genus} {epithet}" if genus and epithet else None


def _field(row: Mapping[str, Any] | object, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def species_key(row: Mapping[str, Any] | object) -> str | None:
    """What `max_per_species` counts by: the scientific name's key; None (no cap) when it is unknown."""
    name = scientific_name(_field(row, "genus"), _field(row, "species"))
    return None if name is None else name_key(name)


class Taxonomy(BaseModel):
    """A taxon's path from kingdom down; unknown ranks are null."""

    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = Field(None, alias="class")
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = Field(None, description="The species epithet only, as in the TreeOfLife data.")

    model_config = {"populate_by_name": True}

    @property
    def scientific_name(self) -> str | None:
        return scientific_name(self.genus, self.species)

    def at(self, rank: str) -> str | None:
        """The name at `rank`; at species, the scientific name (an epithet alone names nothing)."""
        if rank == "species":
            return self.scientific_name
        return getattr(self, "class_" if rank == "class" else rank)

    def ranks(self) -> dict[str, str | None]:
        """Rank -> name, kingdom to species (the epithet), keyed as the data names them."""
        return {rank: getattr(self, "class_" if rank == "class" else rank) for rank in RANKS}


class TaxonFilter(BaseModel):
    """`rank` = `value`, compared by `name_key` (case, Unicode form and whitespace do not matter); exact, not a
    prefix. For `species`, a value with a space is genus and epithet together, without one the epithet."""

    rank: FilterRank = Field(description="The rank to compare.")
    value: str = Field(
        min_length=1,
        max_length=200,
        description="The name at that rank, e.g. Lepidoptera. For `species`, the epithet (`plexippus`) or "
        "genus and epithet (`Danaus plexippus`).",
    )

    model_config = {"frozen": True}

    @field_validator("value")
    @classmethod
    def _visible(cls, value: str) -> str:
        value = clean(value)
        if not value:
            raise ValueError("a filter value must not be blank")
        return value

    @classmethod
    def parse(cls, text: str) -> TaxonFilter:
        """`order:Lepidoptera`, the form a filter takes in form fields, query strings and permalinks."""
        rank, _, value = text.partition(":")
        return cls.model_validate({"rank": rank.strip().lower(), "value": value})

    def __str__(self) -> str:
        return f"{self.rank}:{self.value}"

    @property
    def key(self) -> str:
        return name_key(self.value)

    @property
    def binomial(self) -> bool:
        return self.rank == "species" and " " in self.value

    def stored_name(self, row: Mapping[str, Any] | object) -> str | None:
        """The row's name this filter compares with (the scientific name for a binomial filter)."""
        if self.binomial:
            return scientific_name(_field(row, "genus"), _field(row, "species"))
        value = _field(row, self.rank)
        return None if value is None else str(value)

    def admits(self, row: Mapping[str, Any] | object) -> bool:
        name = self.stored_name(row)
        return name is not None and name_key(name) == self.key


# --- Scopes ------------------------------------------------------------------------------------------
# A scope is a conjunction of conditions over a record's columns; the Python predicate and the SQL are both
# made from the same conditions, so the two cannot drift apart.


@dataclass(frozen=True)
class IsTrue:
    column: str

    def holds(self, row: Mapping[str, Any] | object) -> bool:
        return bool(_field(row, self.column))

    def sql(self, columns: Mapping[str, str]) -> str:
        return f"coalesce({columns.get(self.column, self.column)}, false)"


@dataclass(frozen=True)
class Equals:
    column: str
    value: str

    def holds(self, row: Mapping[str, Any] | object) -> bool:
        return _field(row, self.column) == self.value

    def sql(self, columns: Mapping[str, str]) -> str:
        return f"coalesce({columns.get(self.column, self.column)} = '{self.value}', false)"


@dataclass(frozen=True)
class Contains:
    """Case-insensitive substring (ASCII `value`)."""

    column: str
    value: str

    def holds(self, row: Mapping[str, Any] | object) -> bool:
        return self.value in str(_field(row, self.column) or "").lower()

    def sql(self, columns: Mapping[str, str]) -> str:
        return f"coalesce(lower({columns.get(self.column, self.column)}) LIKE '%{self.value}%', false)"


Condition = IsTrue | Equals | Contains


@dataclass(frozen=True)
class ScopeRule:
    """One scope: what it admits, how the page says it, its bit in the lookup sidecar's flags."""

    name: str
    description: str
    phrase: str  # the page's "N hits among {phrase}"
    label: str  # the page's option text
    bit: int
    conditions: tuple[Condition, ...] = ()

    def admits(self, row: Mapping[str, Any] | object) -> bool:
        """Whether a record (a row dict or a `Record`) may be a hit under this scope."""
        return all(condition.holds(row) for condition in self.conditions)

    def sql(self, columns: Mapping[str, str] | None = None) -> str:
        """A DuckDB boolean over the metadata table; `columns` maps a column to the expression standing for it."""
        parts = [condition.sql(columns or {}) for condition in self.conditions]
        return " AND ".join(parts) if parts else "true"


SCOPE_TABLE: tuple[ScopeRule, ...] = (
    ScopeRule("all", "every record", "all records", "All records", 1),
    ScopeRule(
        "url_only", "records whose image has a source URL", "records with an image URL", "Only with an image URL", 2,
        (IsTrue("has_url"),),
    ),
    ScopeRule(
        "inaturalist", "records with a URL published by iNaturalist through GBIF", "iNaturalist records",
        "Only iNaturalist (via GBIF)", 4,
        (IsTrue("has_url"), Equals("source_dataset", "gbif"), Contains("publisher", "inaturalist")),
    ),
    ScopeRule(
        "bioclip2_training", "records BioCLIP-2 was trained on", "BioCLIP-2 training records",
        "Only BioCLIP-2 training images", 8, (IsTrue("in_bioclip2_training"),),
    ),
)  # fmt: skip
SCOPES: dict[str, ScopeRule] = {rule.name: rule for rule in SCOPE_TABLE}
Scope = Literal[tuple(SCOPES)]  # type: ignore[valid-type]

# --- Image sizes -------------------------------------------------------------------------------------

ImageSize = Literal["thumb", "medium", "full"]
IMAGE_SIZES: dict[str, int | None] = {"thumb": 256, "medium": 768, "full": None}
"""Default longest side in pixels per size (the fetcher's settings may change them); None: as published."""

# --- Why a search stopped ----------------------------------------------------------------------------

STOPPED: dict[str, str] = {
    "filled": "top_n hits found",
    "min_similarity": "the remaining neighbours are less similar than min_similarity",
    "exhausted": "every vector the index can reach was examined",
    "max_candidates": "the most neighbours one query may examine were examined",
    "max_nprobe": "the most IVF lists one query may visit were visited and they ran dry",
    "max_rounds": "the most widening rounds one request may make were made",
}
Stopped = Literal[tuple(STOPPED)]  # type: ignore[valid-type]

# --- The search parameters ---------------------------------------------------------------------------

DEFAULT_TOP_N = 24
"""One default result count for the API and the page: a 4- or 6-column grid fills evenly, and a filtered
search still costs a few milliseconds at 24."""
MAX_TOP_N = 200
MAX_FILTERS = 8


class SearchParameters(BaseModel):
    """What a search is asked for, whichever way it arrives (the gateway's query, the search service's request)."""

    top_n: int = Field(DEFAULT_TOP_N, ge=1, le=MAX_TOP_N, description="Hits per query.")
    nprobe: int | None = Field(
        None, ge=1, le=65536, description="IVF lists to visit; clamped to the index's nlist. Default: the service's."
    )
    ef_search: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="HNSW search breadth (an HNSW index, or an IVF's HNSW coarse quantizer, where it is at least "
        "nprobe). Default: the service's.",
    )
    scope: Scope = Field("all", description="Which records may be hits.")
    filters: list[TaxonFilter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Taxon filters; a hit must pass all of them (AND)."
    )
    min_similarity: float | None = Field(
        None, ge=-1.0, le=1.0, description="Leave out hits less similar than this (cosine)."
    )
    max_per_source: int | None = Field(
        None, ge=1, le=MAX_TOP_N, description="At most this many hits with the same source_id (source record)."
    )
    max_per_species: int | None = Field(
        None, ge=1, le=MAX_TOP_N, description="At most this many hits of the same species (genus and epithet)."
    )


class ScopeView(BaseModel):
    name: str
    description: str
    phrase: str = Field(description="How the page says it: `N hits among {phrase}`.")
    label: str = Field(description="The page's option text.")


class Vocabulary(BaseModel):
    """The terms as JSON, for clients that must not repeat them (the page builds its controls from this)."""

    ranks: list[str] = Field(description="Kingdom to species, broad to specific.")
    filter_ranks: list[str] = Field(description="The ranks a taxon filter may name.")
    scopes: list[ScopeView] = Field(description="Which records may be hits, in the order to offer them.")
    image_sizes: dict[str, int | None] = Field(
        description="Size word -> default longest side in pixels (null: as published)."
    )
    stopped: dict[str, str] = Field(description="Why a search ended -> what it means.")
    parameters: dict[str, Any] = Field(
        description="The search parameters' JSON schema properties: type, default, minimum, maximum, description."
    )


def vocabulary(parameters: type[BaseModel] = SearchParameters) -> Vocabulary:
    """The vocabulary document; `parameters` is the model whose fields a client sends (it may extend ours)."""
    return Vocabulary(
        ranks=list(RANKS),
        filter_ranks=list(FILTER_RANKS),
        scopes=[ScopeView(name=r.name, description=r.description, phrase=r.phrase, label=r.label) for r in SCOPE_TABLE],
        image_sizes=dict(IMAGE_SIZES),
        stopped=dict(STOPPED),
        parameters=parameters.model_json_schema()["properties"],
    )
