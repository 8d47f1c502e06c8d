"""Taxon names for suggestions: every name the collection holds at each rank (the species as
"Genus epithet", and common names), with how many records carry it, found by prefix.

Names are compared by the vocabulary's `name_key` (the rule the taxon filters use), so a suggestion
is a name a filter will match. Per rank, the keys are one sorted list: a prefix is two binary
searches (`bisect`), and the most frequent names in that range are picked with `argpartition`.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.vocabulary import FILTER_RANKS, name_key, scientific_name

logger = logging.getLogger(__name__)

# Above every character a key can hold: key + _TOP is past every key that starts with key.
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class TaxaError:
    """Why the taxon names are not loaded; `retry_at` (time.monotonic()) when the service tries again, None when
    it will not (the failure is not transient)."""

    message: str
    retry_at: float | None = None


@dataclass(frozen=True)
class TaxonName:
    name: str  # as the collection spells it (its key's most frequent spelling; see TaxonIndex.from_counts)
    rank: str  # one of the vocabulary's FILTER_RANKS; "species" names are "Genus epithet"
    count: int  # records carrying it


@dataclass(frozen=True)
class Suggestions:
    taxa: list[TaxonName]
    nearest: bool  # nothing starts with the prefix: these share its longest prefix that matches


class _RankNames:
    """One rank's names, sorted by key."""

    def __init__(self, rank: str, counted: dict[str, tuple[str, int]]) -> None:
        self.rank = rank
        self.keys = sorted(counted)
        self.names = [counted[key][0] for key in self.keys]
        self.counts = np.fromiter((counted[key][1] for key in self.keys), dtype=np.int64, count=len(self.keys))

    def span(self, key: str) -> tuple[int, int]:
        return bisect.bisect_left(self.keys, key), bisect.bisect_left(self.keys, key + _TOP)

    def top(self, start: int, stop: int, limit: int) -> list[TaxonName]:
        """The `limit` most frequent names in keys[start:stop], most frequent first."""
        counts = self.counts[start:stop]
        picked = np.argpartition(-counts, limit - 1)[:limit] if len(counts) > limit else np.arange(len(counts))
        order = sorted(picked.tolist(), key=lambda i: (-int(counts[i]), self.keys[start + i]))
        return [TaxonName(self.names[start + i], self.rank, int(counts[i])) for i in order]


class TaxonIndex:
    """Every taxon name of a collection by rank, for prefix suggestions. Immutable once built."""

    def __init__(self, names: dict[str, _RankNames]) -> None:
        self._ranks = names

    @classmethod
    def from_counts(cls, counts: dict[str, Iterable[tuple[str | None, int]]]) -> TaxonIndex:
        """From each rank's distinct names and their record counts (a species named "Genus epithet").
        Names with the same `name_key` are one, counts added, shown as the spelling most records carry (ties: the
        first in code-point order); blanks are left out. The spelling does not depend on the order of `counts`,
        which a GROUP BY does not fix: the sidecar's counts and DuckDB's give the same names."""
        ranks: dict[str, _RankNames] = {}
        for rank in FILTER_RANKS:
            counted: dict[str, tuple[str, int]] = {}  # key -> (a spelling, the key's records)
            # Only keys met more than once (few: most names have one spelling) keep each spelling's records.
            variants: dict[str, dict[str, int]] = {}
            for value, count in counts.get(rank, ()):
                if not value:
                    continue
                key = name_key(value)
                if not key:
                    continue
                spelling = value.strip()
                known = counted.get(key)
                if known is None:
                    counted[key] = (spelling, count)
                    continue
                spelt = variants.setdefault(key, {known[0]: known[1]})
                spelt[spelling] = spelt.get(spelling, 0) + count
                counted[key] = (known[0], known[1] + count)
            for key, spelt in variants.items():
                counted[key] = (min(spelt.items(), key=lambda item: (-item[1], item[0]))[0], counted[key][1])
            ranks[rank] = _RankNames(rank, counted)
        return cls(ranks)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Sequence[str | None], int]]) -> TaxonIndex:
        """From (values of FILTER_RANKS in order, record count) rows: one per distinct taxonomy."""
        per_rank: dict[str, Counter[str]] = {rank: Counter() for rank in FILTER_RANKS}
        genus_at, species_at = FILTER_RANKS.index("genus"), FILTER_RANKS.index("species")
        for values, count in rows:
            for position, rank in enumerate(FILTER_RANKS):
                value = values[position]
                if rank == "species":
                    value = scientific_name(values[genus_at], values[species_at]) if value else None
                if value:
                    per_rank[rank][value] += count
        return cls.from_counts({rank: counter.items() for rank, counter in per_rank.items()})

    def __len__(self) -> int:
        return sum(len(names.keys) for names in self._ranks.values())

    def suggest(self, prefix: str, *, rank: str | None = None, limit: int = 10) -> Suggestions:
        """The most frequent names starting with `prefix` (by name key), at `rank` or at every rank.

        When none does, the names sharing the longest shorter prefix that matches some name, flagged
        `nearest`. An empty prefix gives the most frequent names. `rank` must be one of FILTER_RANKS."""
        if rank is not None and rank not in self._ranks:
            raise ValueError(f"unknown rank {rank!r}")
        ranks = [self._ranks[rank]] if rank else list(self._ranks.values())
        key = name_key(prefix)
        for length in range(len(key), -1, -1):
            found = self._matching(ranks, key[:length], limit)
            if found or length == 0:
                return Suggestions(found, nearest=length < len(key))
        raise AssertionError("unreachable")  # length 0 always returns

    @staticmethod
    def _matching(ranks: list[_RankNames], key: str, limit: int) -> list[TaxonName]:
        found: list[TaxonName] = []
        for names in ranks:
            start, stop = names.span(key)
            if stop > start:
                found += names.top(start, stop, limit)
        found.sort(key=lambda taxon: (-taxon.count, name_key(taxon.name), taxon.rank))
        return found[:limit]
