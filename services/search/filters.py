"""What a hit must satisfy: a scope, taxon filters and a minimum similarity, and how a row is judged.

The same rules are applied two ways: to whole rows here (when a collection has no lookup sidecar)
and to the sidecar's arrays in sidecar.py; tests check that both agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "common_name")
SCOPES: tuple[str, ...] = ("all", "url_only", "inaturalist", "bioclip2_training")


@dataclass(frozen=True)
class TaxonFilter:
    """`rank` = `value`, compared case-insensitively after trimming.

    For `species`, a value with a space ("Danaus plexippus") is genus and epithet together;
    without one it is the epithet alone, as the TreeOfLife data stores it.
    """

    rank: str
    value: str

    def __post_init__(self) -> None:
        if self.rank not in RANKS:
            raise ValueError(f"unknown rank {self.rank!r}")
        object.__setattr__(self, "value", normalise(self.value))

    @property
    def binomial(self) -> bool:
        return self.rank == "species" and " " in self.value


@dataclass(frozen=True)
class Criteria:
    scope: str = "all"
    filters: tuple[TaxonFilter, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}")

    @property
    def selects_all(self) -> bool:
        return self.scope == "all" and not self.filters


def normalise(value: str) -> str:
    return " ".join(value.split()).lower()


def in_scope(row: dict[str, Any], scope: str) -> bool:
    """Whether a metadata row may be a hit under a scope (see SCOPES in the search schema)."""
    if scope == "all":
        return True
    if scope == "url_only":
        return bool(row.get("has_url"))
    if scope == "inaturalist":
        publisher = (row.get("publisher") or "").lower()
        return bool(row.get("has_url")) and row.get("source_dataset") == "gbif" and "inaturalist" in publisher
    if scope == "bioclip2_training":
        return bool(row.get("in_bioclip2_training"))
    raise ValueError(f"unknown scope {scope}")


def _rank_value(row: dict[str, Any], taxon: TaxonFilter) -> str | None:
    if taxon.binomial:
        genus, epithet = row.get("genus"), row.get("species")
        return f"{genus} {epithet}" if genus and epithet else None
    value = row.get(taxon.rank)
    return None if value is None else str(value)


def row_matches(row: dict[str, Any], criteria: Criteria) -> bool:
    if not in_scope(row, criteria.scope):
        return False
    for taxon in criteria.filters:
        value = _rank_value(row, taxon)
        if value is None or normalise(value) != taxon.value:
            return False
    return True


def species_key(row: dict[str, Any]) -> tuple[str, str] | None:
    """What `max_per_species` counts by: genus and epithet; None (no cap) when either is unknown."""
    genus, epithet = row.get("genus"), row.get("species")
    return (genus.lower(), epithet.lower()) if genus and epithet else None
