"""What a hit must satisfy: a scope and taxon filters, and how a whole row is judged.

The rules are the vocabulary's (services/common/vocabulary.py): a scope's predicate and each filter's
name comparison. The DuckDB lookup applies them to rows here; the sidecar lookup applies the same rules
to its arrays (services/search/lookup.py); tests check that both agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.vocabulary import SCOPES, SearchParameters, TaxonFilter, species_key

logger = logging.getLogger(__name__)

__all__ = ["Criteria", "TaxonFilter", "UnknownScope", "row_matches", "species_key"]


class UnknownScope(ValueError):
    """A scope name that is not in the vocabulary's table."""


@dataclass(frozen=True)
class Criteria:
    scope: str = SearchParameters.model_fields["scope"].default
    filters: tuple[TaxonFilter, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise UnknownScope(f"unknown scope {self.scope!r}")

    @property
    def selects_all(self) -> bool:
        return not SCOPES[self.scope].conditions and not self.filters


def row_matches(row: Mapping[str, Any], criteria: Criteria) -> bool:
    """Whether a metadata row is in the scope and passes every taxon filter."""
    return SCOPES[criteria.scope].admits(row) and all(taxon.admits(row) for taxon in criteria.filters)
