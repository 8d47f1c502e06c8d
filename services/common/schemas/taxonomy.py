"""A taxon's ranks, kingdom to species: defined in the vocabulary, re-exported for the schemas that show them."""

from __future__ import annotations

from services.common.vocabulary import Taxonomy

__all__ = ["Taxonomy"]
