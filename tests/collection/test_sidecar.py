"""The lookup sidecar and DuckDB rows judge candidates alike, and row lookups stay index scans."""

from __future__ import annotations

import gc
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from collection.__main__ import main as collection_main
from collection.build import write_metadata
from collection.sidecar import write_sidecar
from services.common.vocabulary import TaxonFilter, species_key
from services.search.filters import Criteria, row_matches
from services.search.lookup import LookupSidecar, RecordLookup, SidecarLookup, default_sidecar_path, open_lookup
from services.search.metadata import MetadataStore
from tests.search.conftest import rows_for


def lookup(path: Path, *, use_sidecar: bool = True) -> RecordLookup:
    return open_lookup(MetadataStore(path), use_sidecar=use_sidecar)


CRITERIA = [
    Criteria("all"),
    Criteria("url_only"),
    Criteria("inaturalist"),
    Criteria("bioclip2_training"),
    Criteria("all", (TaxonFilter(rank="order", value="LEPIDOPTERA"),)),
    Criteria("url_only", (TaxonFilter(rank="family", value="family3"), TaxonFilter(rank="class", value="Insecta"))),
    Criteria("all", (TaxonFilter(rank="species", value="genus2 epithet13"),)),
    Criteria("all", (TaxonFilter(rank="common_name", value="common  7"),)),
    Criteria("all", (TaxonFilter(rank="genus", value="Nowhere"),)),
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
    fast = lookup(metadata_file)
    slow = lookup(metadata_file, use_sidecar=False)
    assert (fast.name, slow.name) == ("sidecar", "duckdb")
    ids = np.arange(-2, 305)  # a few ids without a row at both ends
    rows = slow.fetch(ids.tolist())
    expected = [i in rows and row_matches(rows[i], criteria) for i in ids.tolist()]
    assert fast.screen(ids, criteria).keep.tolist() == expected == slow.screen(ids, criteria).keep.tolist()
    assert any(expected) or criteria.filters[0].key == "nowhere"


def test_sidecar_and_rows_count_species_alike(metadata_file: Path) -> None:
    fast = lookup(metadata_file).screen(np.arange(300), Criteria())
    slow = lookup(metadata_file, use_sidecar=False).screen(np.arange(300), Criteria())
    # Same species <-> same key, and no key (no cap) exactly where genus or epithet is missing.
    assert [key is None for key in fast.species] == [key is None for key in slow.species]
    pairs = {(a, b) for a, b in zip(fast.species, slow.species, strict=True) if a is not None}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_both_paths_give_the_same_records(metadata_file: Path) -> None:
    ids = [*range(0, 300, 7), 9, 13]  # 9: no genus
    fast = lookup(metadata_file).fetch(ids)
    slow = lookup(metadata_file, use_sidecar=False).fetch(ids)
    assert fast == slow and len(fast) == len(ids)
    assert fast[9]["scientific_name"] is None and fast[13]["scientific_name"] == "Genus2 epithet13"


def test_row_lookups_are_index_scans_on_both_paths(metadata_file: Path) -> None:
    ids = [3, 50, 120, 299]
    for use_sidecar in (True, False):
        with closing(MetadataStore(metadata_file)) as store:
            assert "Index Scan" in open_lookup(store, use_sidecar=use_sidecar).fetch_plan(ids)
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
    found = lookup(path)
    assert found.name == "duckdb" and found.store.rows == 60


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
    assert collection_main(["sidecar", "--metadata", str(legacy), "--out", str(default_sidecar_path(legacy))]) == 0
    fast, slow = lookup(legacy), lookup(legacy, use_sidecar=False)
    assert fast.name == "sidecar" and fast.store.url_layout == "identifier"
    ids = np.arange(80)
    for criteria in (
        Criteria("url_only"),
        Criteria("inaturalist"),
        Criteria("all", (TaxonFilter(rank="order", value="x"),)),
    ):
        assert fast.screen(ids, criteria).keep.tolist() == slow.screen(ids, criteria).keep.tolist()
    assert fast.fetch([20, 21]) == slow.fetch([20, 21])
    assert species_key(fast.fetch([20])[20]) == "genus9 epithet20"


def test_without_records_the_hits_rows_come_from_duckdb_the_same(tmp_path: Path) -> None:
    path = tmp_path / "metadata.duckdb"
    write_metadata(rows_for(120), path, sidecar=False)
    assert (
        collection_main(["sidecar", "--metadata", str(path), "--out", str(default_sidecar_path(path)), "--no-records"])
        == 0
    )
    narrow = lookup(path)
    assert isinstance(narrow, SidecarLookup) and not narrow.sidecar.has_records
    ids = [0, 20, 41, 119, 500]
    assert narrow.fetch(ids) == lookup(path, use_sidecar=False).fetch(ids)
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


def test_the_command_takes_the_band_and_memory_options_and_leaves_bands_without_rows_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gaps.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        """CREATE TABLE metadata AS SELECT i::INTEGER AS id, 'Genus' || (i % 7) AS genus, 'e' || i AS species
           FROM range(420) t(i) WHERE i < 10 OR i >= 400"""
    )
    con.close()
    banded = tmp_path / "banded"
    args = ["sidecar", "--metadata", str(path), "--out", str(banded), "--band-ids", "50", "--memory-limit", "256MB"]
    assert collection_main(args) == 0
    write_sidecar(path, tmp_path / "whole")
    for name in ("flags.npy", "taxon.npy", "uuid.npy", "source.npy", "strings.bin", "blocks.npy"):
        assert (tmp_path / "whole" / name).read_bytes() == (banded / name).read_bytes(), name
    sidecar = LookupSidecar(banded)
    assert sidecar.codes_of(np.array([9, 10, 250, 399, 400])).tolist()[1:4] == [0xFFFFFFFF] * 3
    assert sidecar.flags_of(np.array([9, 10, 399, 400])).tolist() == [1, 0, 0, 1]
    assert sidecar.records([5, 200, 405]).keys() == {5, 405}
    # Both options reach the writer: a limit DuckDB cannot read and a band of no ids fail with a message.
    capsys.readouterr()
    assert collection_main([*args[:4], str(tmp_path / "bad"), "--memory-limit", "lots"]) == 1
    assert collection_main([*args[:4], str(tmp_path / "bad"), "--band-ids", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("sidecar failed") == 2 and "band_ids" in err
