"""The lookup sidecar and DuckDB rows judge candidates alike, and row lookups stay index scans."""

from __future__ import annotations

import gc
import time
import tracemalloc
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from services.search.build import write_metadata
from services.search.filters import Criteria, TaxonFilter, row_matches, species_key
from services.search.metadata import MetadataStore, default_sidecar_path
from services.search.sidecar import LookupSidecar, write_sidecar
from services.search.sidecar import main as sidecar_main
from tests.search.conftest import rows_for

CRITERIA = [
    Criteria("all"),
    Criteria("url_only"),
    Criteria("inaturalist"),
    Criteria("bioclip2_training"),
    Criteria("all", (TaxonFilter("order", "LEPIDOPTERA"),)),
    Criteria("url_only", (TaxonFilter("family", "family3"), TaxonFilter("class", "Insecta"))),
    Criteria("all", (TaxonFilter("species", "genus2 epithet13"),)),
    Criteria("all", (TaxonFilter("common_name", "common  7"),)),
    Criteria("all", (TaxonFilter("genus", "Nowhere"),)),
]


@pytest.fixture(scope="module")
def metadata_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_for(300)
    for i, row in enumerate(rows):
        if i % 9 == 0:
            row["genus"] = None  # no species to count by
    path = tmp_path_factory.mktemp("meta") / "metadata.duckdb"
    write_metadata(rows, path)
    return path


@pytest.mark.parametrize("criteria", CRITERIA, ids=lambda c: f"{c.scope}-{len(c.filters)}")
def test_sidecar_and_rows_keep_the_same_candidates(metadata_file: Path, criteria: Criteria) -> None:
    fast = MetadataStore(metadata_file)
    slow = MetadataStore(metadata_file, use_sidecar=False)
    assert (fast.lookup, slow.lookup) == ("sidecar", "duckdb")
    ids = np.arange(-2, 305)  # a few ids without a row at both ends
    rows = slow.fetch(ids.tolist())
    expected = [i in rows and row_matches(rows[i], criteria) for i in ids.tolist()]
    assert fast.screen(ids, criteria).keep.tolist() == expected == slow.screen(ids, criteria).keep.tolist()
    assert any(expected) or criteria.filters[0].value == "nowhere"


def test_sidecar_and_rows_count_species_alike(metadata_file: Path) -> None:
    fast = MetadataStore(metadata_file).screen(np.arange(300), Criteria())
    slow = MetadataStore(metadata_file, use_sidecar=False).screen(np.arange(300), Criteria())
    # Same species <-> same key, and no key (no cap) exactly where genus or epithet is missing.
    assert [key is None for key in fast.species] == [key is None for key in slow.species]
    pairs = {(a, b) for a, b in zip(fast.species, slow.species, strict=True) if a is not None}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_both_paths_give_the_same_records(metadata_file: Path) -> None:
    ids = [*range(0, 300, 7), 9, 13]  # 9: no genus
    fast = MetadataStore(metadata_file).fetch(ids)
    slow = MetadataStore(metadata_file, use_sidecar=False).fetch(ids)
    assert fast == slow and len(fast) == len(ids)
    assert fast[9]["scientific_name"] is None and fast[13]["scientific_name"] == "Genus2 epithet13"


def test_row_lookups_are_index_scans_on_both_paths(metadata_file: Path) -> None:
    ids = [3, 50, 120, 299]
    for use_sidecar in (True, False):
        with closing(MetadataStore(metadata_file, use_sidecar=use_sidecar)) as store:
            assert "Index Scan" in store.fetch_plan(ids)
    gc.collect()  # other tests' stores, so that a connection of another configuration may open
    # Why scopes are never put beside `id IN (...)`: DuckDB then scans the table instead.
    con = duckdb.connect(str(metadata_file), read_only=True)
    plan = con.execute("EXPLAIN ANALYZE SELECT * FROM metadata WHERE id IN (3, 50, 120, 299) AND has_url").fetchall()
    con.close()
    assert "Index Scan" not in str(plan)


def test_a_sidecar_from_another_metadata_file_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "metadata.duckdb"
    write_metadata(rows_for(50), path)
    sidecar = default_sidecar_path(path)
    kept = tmp_path / "kept"
    sidecar.rename(kept)
    write_metadata(rows_for(60), path, sidecar=False)
    kept.rename(sidecar)
    store = MetadataStore(path)
    assert store.lookup == "duckdb" and store.rows == 60


def test_sidecar_command_makes_one_for_a_legacy_identifier_database(tmp_path: Path) -> None:
    modern = tmp_path / "modern.duckdb"
    write_metadata(rows_for(80), modern, sidecar=False)
    legacy = tmp_path / "legacy.duckdb"
    con = duckdb.connect(str(legacy))
    con.execute("ATTACH ? AS new (READ_ONLY)", [str(modern)])
    con.execute(
        """CREATE TABLE metadata AS SELECT id, uuid, kingdom::VARCHAR AS kingdom, "order"::VARCHAR AS "order",
           genus, species, source_dataset::VARCHAR AS source_dataset, publisher::VARCHAR AS publisher,
           in_bioclip2_training,
           CASE WHEN m.has_url THEN p.prefix || m.identifier_suffix END AS identifier
           FROM new.metadata m LEFT JOIN new.url_prefixes p ON m.url_prefix_id = p.prefix_id"""
    )
    con.close()
    assert sidecar_main(["--metadata", str(legacy), "--out", str(default_sidecar_path(legacy))]) == 0
    fast, slow = MetadataStore(legacy), MetadataStore(legacy, use_sidecar=False)
    assert fast.lookup == "sidecar" and fast.url_layout == "identifier"
    ids = np.arange(80)
    for criteria in (Criteria("url_only"), Criteria("inaturalist"), Criteria("all", (TaxonFilter("order", "x"),))):
        assert fast.screen(ids, criteria).keep.tolist() == slow.screen(ids, criteria).keep.tolist()
    assert fast.fetch([20, 21]) == slow.fetch([20, 21])
    assert species_key(fast.fetch([20])[20]) == ("genus9", "epithet20")


def test_without_records_the_hits_rows_come_from_duckdb_the_same(tmp_path: Path) -> None:
    path = tmp_path / "metadata.duckdb"
    write_metadata(rows_for(120), path, sidecar=False)
    assert sidecar_main(["--metadata", str(path), "--out", str(default_sidecar_path(path)), "--no-records"]) == 0
    narrow = MetadataStore(path)
    assert narrow.lookup == "sidecar" and narrow.sidecar is not None and not narrow.sidecar.has_records
    ids = [0, 20, 41, 119, 500]
    assert narrow.fetch(ids) == MetadataStore(path, use_sidecar=False).fetch(ids)
    assert "Index Scan" in narrow.fetch_plan(ids)


def test_the_sidecar_is_the_same_made_in_small_bands_and_batches(metadata_file: Path, tmp_path: Path) -> None:
    # At TreeOfLife scale the writer must never sort or hold the whole table: it splits the rows by
    # band of ids in one scan and sorts one band at a time. Bands of 37 ids and batches of 7 rows
    # (blocks of 128 ids straddle both) must give the very files one band (no split) gives.
    whole = write_sidecar(metadata_file, tmp_path / "whole", band_ids=1 << 30, batch_rows=1_000_000)
    banded = write_sidecar(metadata_file, tmp_path / "banded", band_ids=37, batch_rows=7)
    assert whole == banded and whole["rows"] == 300
    for name in ("flags.npy", "taxon.npy", "uuid.npy", "source.npy", "strings.bin", "blocks.npy"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "banded" / name).read_bytes(), name
    for name in ("taxa.parquet", "sources.parquet", "prefixes.parquet"):
        assert pq.read_table(tmp_path / "whole" / name).equals(pq.read_table(tmp_path / "banded" / name)), name
    assert not (tmp_path / "banded" / "duckdb.tmp").exists() and not (tmp_path / "banded" / "bands").exists()
    sidecar = LookupSidecar(tmp_path / "banded")
    assert int(sidecar.flags[299]) & 1 and sidecar.records([299, 5]).keys() == {5, 299}


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
    assert allocated < 2_000_000  # 8 ranks of 100,000 names would be >= 40 MB of str objects
    assert sidecar.records([99_999])[99_999]["genus"] == "Genus33333"
    assert sidecar.taxonomy(3000) == {
        "kingdom": None, "phylum": None, "class": "Class3", "order": None, "family": None, "genus": "Genus1000",
        "species": "epithet3000", "common_name": None, "has_url": False, "in_bioclip2_training": None,
    }  # fmt: skip
    mask = sidecar.screen(np.arange(6), Criteria("all", (TaxonFilter("species", "genus1 epithet4"),)))
    assert mask.tolist() == [False, False, False, False, True, False]


def test_a_filter_by_a_new_name_does_not_pass_over_every_taxon_again(tmp_path: Path) -> None:
    # Every genus filter used to lower-case and re-normalise every taxon name (~1M at TreeOfLife
    # scale: ~100 ms each) and keep a 1 MB mask per value. The names are normalised once per rank;
    # a new value then costs one lookup. Timed against the first call on the same machine, so load
    # slows both alike: 200 new genera must cost less than 20 first calls (they cost ~200 before).
    path = tmp_path / "metadata.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE metadata AS SELECT i::INTEGER AS id, 'Genus ' || (i // 2) AS genus, 'e' || i AS species "
        "FROM range(200000) t(i)"
    )
    con.close()
    write_sidecar(path, default_sidecar_path(path))
    sidecar = LookupSidecar(default_sidecar_path(path))
    ids = np.arange(0, 200_000, 97)
    started = time.perf_counter()
    first = sidecar.screen(ids, Criteria("all", (TaxonFilter("genus", "genus  0"),)))
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    kept = [sidecar.screen(ids, Criteria("all", (TaxonFilter("genus", f"GENUS {g}"),))) for g in range(1, 201)]
    assert time.perf_counter() - started < 20 * first_s
    assert first.tolist() == [i // 2 == 0 for i in ids.tolist()]
    assert [int(mask.sum()) for mask in kept[:3]] == [0, 0, 0]
    assert int(kept[48 - 1].sum()) == 1  # genus 48 holds id 97
