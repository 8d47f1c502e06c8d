"""The sidecar reader at scale: taxa kept as Arrow arrays, name keys made once per rank, and the keys it makes
agreeing with the vocabulary's name_key (the rule the DuckDB lookup applies to rows)."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
import unicodedata
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from collection.sidecar import write_sidecar
from services.common.vocabulary import TaxonFilter, species_key
from services.search.filters import Criteria, row_matches
from services.search.lookup import LookupSidecar, default_sidecar_path
from services.search.metadata import MetadataStore
from services.search.taxa import TaxonIndex


def test_opening_a_sidecar_makes_no_python_objects_per_taxon(tmp_path: Path) -> None:
    # TreeOfLife has ~1M taxa: as Python strings they took ~0.5 GB and ~15 s of every start-up.
    path = tmp_path / "metadata.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        """CREATE TABLE metadata AS SELECT i::INTEGER AS id, 'Class' || (i // 1000) AS class,
           'Genus' || (i // 3) AS genus, 'epithet' || i AS species FROM range(100000) t(i)"""
    )
    con.close()
    write_sidecar(path, default_sidecar_path(path))
    tracemalloc.start()
    try:
        sidecar = LookupSidecar(default_sidecar_path(path))
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One rank of 100,000 names as str objects is >= 5 MB; the per-taxon key indices that open makes
    # (genus, epithet, scientific name: numpy, traced) are ~1.5 MB.
    assert allocated < 3_000_000
    assert sidecar.records([99_999])[99_999]["genus"] == "Genus33333"
    assert sidecar.taxonomy(3000) == {
        "kingdom": None, "phylum": None, "class": "Class3", "order": None, "family": None, "genus": "Genus1000",
        "species": "epithet3000", "common_name": None, "has_url": False, "in_bioclip2_training": None,
    }  # fmt: skip
    mask = sidecar.screen(np.arange(6), Criteria("all", (TaxonFilter(rank="species", value="genus1 epithet4"),)))
    assert mask.tolist() == [False, False, False, False, True, False]


def test_a_filter_by_a_new_name_does_not_pass_over_every_taxon_again(tmp_path: Path) -> None:
    # Every family filter used to key every taxon's name again (~1M at TreeOfLife scale: ~100 ms each)
    # and keep a 1 MB mask per value. The names are keyed once per rank; a new value then costs one
    # lookup. Timed against the first call on the same machine, so load slows both alike: 200 new
    # families must cost less than 20 first calls (they cost ~200 before).
    path = tmp_path / "metadata.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE metadata AS SELECT i::INTEGER AS id, 'Family ' || (i // 2) AS family, 'e' || i AS species "
        "FROM range(200000) t(i)"
    )
    con.close()
    write_sidecar(path, default_sidecar_path(path))
    sidecar = LookupSidecar(default_sidecar_path(path))
    ids = np.arange(0, 200_000, 97)
    started = time.perf_counter()
    first = sidecar.screen(ids, Criteria("all", (TaxonFilter(rank="family", value="family  0"),)))
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    kept = [
        sidecar.screen(ids, Criteria("all", (TaxonFilter(rank="family", value=f"FAMILY {f}"),))) for f in range(1, 201)
    ]
    assert time.perf_counter() - started < 20 * first_s
    assert first.tolist() == [i // 2 == 0 for i in ids.tolist()]
    assert [int(mask.sum()) for mask in kept[:3]] == [0, 0, 0]
    assert int(kept[48 - 1].sum()) == 1  # family 48 holds id 97


# Names from pieces that name_key treats specially: case (ß, İ, the Kelvin and Ohm signs, ǅ), both Unicode
# forms, invisible characters, whitespace of several kinds, and plain ASCII (Arrow's path).
PIECES = ["a", "B", "z", "ß", "SS", "İ", "\u212a", "k", "\u2126", "ω", "ǅ", "é", "e\u0301", "E\u0301", "\u0301"]
PIECES += ["\u200b", "\u00ad", "\x07", " ", "  ", "\t", "\u00a0", "\u3000", "-", "."]
names = st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=5).map("".join))
taxa_rows = st.lists(st.tuples(names, names, names), min_size=1, max_size=10)


def _filters(rows: list[dict[str, Any]]) -> list[TaxonFilter]:
    """Filters naming what is stored, typed in another case and Unicode form, and a binomial of each row."""
    wanted = []
    for row in rows:
        for rank in ("genus", "species", "common_name"):
            if row[rank] is not None:
                wanted += [(rank, row[rank]), (rank, unicodedata.normalize("NFD", row[rank].upper()))]
        wanted.append(("species", f"{row['genus'] or ''} {row['species'] or ''}"))
    filters = []
    for rank, value in wanted:
        try:
            filters.append(TaxonFilter(rank=rank, value=value))
        except ValidationError:
            continue  # nothing visible: not a filter anyone can send
    return filters


@settings(max_examples=40, deadline=None)
@given(taxa_rows)
def test_the_sidecars_name_keys_are_name_key_and_agree_with_the_rows(taxa: list[tuple[Any, Any, Any]]) -> None:
    rows = [
        {"id": i, "genus": genus, "species": epithet, "common_name": common}
        for i, (genus, epithet, common) in enumerate(taxa)
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metadata.duckdb"
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE metadata (id INTEGER, genus VARCHAR, species VARCHAR, common_name VARCHAR)")
        con.executemany("INSERT INTO metadata VALUES (?, ?, ?, ?)", [list(row.values()) for row in rows])
        con.close()
        write_sidecar(path, default_sidecar_path(path), records=False)
        sidecar = LookupSidecar(default_sidecar_path(path))
        ids = np.arange(len(rows))
        for taxon in _filters(rows):
            criteria = Criteria("all", (taxon,))
            assert sidecar.screen(ids, criteria).tolist() == [row_matches(row, criteria) for row in rows], taxon
        # max_per_species: the same key exactly where species_key is the same, none exactly where it is None.
        keys = sidecar.species_keys(ids).tolist()
        expected = [species_key(row) for row in rows]
        assert [key < 0 for key in keys] == [key is None for key in expected]
        pairs = {(a, b) for a, b in zip(keys, expected, strict=True) if b is not None}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def _named(counts: dict[str, list[tuple[str | None, int]]]) -> dict[str, dict[str | None, int]]:
    """Per rank, each name's count (names listed twice added up); ranks with no name left out."""
    out: dict[str, dict[str | None, int]] = {}
    for rank, found in counts.items():
        for name, count in found:
            if name is not None:
                out.setdefault(rank, {})
                out[rank][name] = out[rank].get(name, 0) + count
    return out


def _shown(index: TaxonIndex) -> list[tuple[str, str, int]]:
    return sorted((t.rank, t.name, t.count) for t in index.suggest("", limit=10**6).taxa)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(names, names, names, st.integers(min_value=1, max_value=4)), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=0, max_value=3),
)
def test_the_sidecars_taxon_counts_are_duckdbs_group_by(taxa: list[tuple[Any, ...]], chunk: int, gap: int) -> None:
    """The taxon-name index counts from the sidecar's codes; it must count what a GROUP BY per rank counts,
    across chunk boundaries and with ids that have no row (gaps)."""
    rows: list[tuple[Any, ...]] = []
    for genus, epithet, common, copies in taxa:
        for _ in range(copies):
            rows.append((len(rows) * (gap + 1), genus, epithet, common))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metadata.duckdb"
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE metadata (id INTEGER, genus VARCHAR, species VARCHAR, common_name VARCHAR)")
        con.executemany("INSERT INTO metadata VALUES (?, ?, ?, ?)", rows)
        con.close()
        write_sidecar(path, default_sidecar_path(path), records=False)
        sidecar = LookupSidecar(default_sidecar_path(path))
        store = MetadataStore(path)
        try:
            counted = store.taxon_counts()
        finally:
            store.close()
        expected = _named(counted)
        assert _named(sidecar.taxon_counts(chunk=chunk)) == expected
        # What /v1/taxa shows, each name in its one spelling, is the same from either.
        assert _shown(TaxonIndex.from_counts(sidecar.taxon_counts(chunk=chunk))) == _shown(
            TaxonIndex.from_counts(counted)
        )
        assert sum(expected.get("genus", {}).values()) == sum(1 for row in rows if row[1] is not None)
