"""The collection builder's pure parts: manifests, URL splitting, index choice, the DuckDB schema."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.search.build import BuildError, choose_index, read_manifest, split_url, write_metadata
from tests.search.conftest import rows_for


def test_csv_and_parquet_manifests_read_the_same(tmp_path: Path) -> None:
    rows = [{"url": "https://a.org/photos/1/x.jpg", "genus": "Apis", "species": "mellifera", "source_id": "0012"}]
    (tmp_path / "m.csv").write_text("url,genus,species,source_id\nhttps://a.org/photos/1/x.jpg,Apis,mellifera,0012\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.csv") == rows == read_manifest(tmp_path / "m.parquet")


def test_manifest_without_url_or_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("genus,species\nApis,mellifera\n")
    with pytest.raises(BuildError, match="`url` or a `path`"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_of_unknown_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(BuildError, match="csv"):
        read_manifest(tmp_path / "m.xlsx")


@pytest.mark.parametrize(
    ("url", "prefix", "suffix"),
    [
        ("https://inaturalist-open-data.s3.amazonaws.com/photos/1/original.jpg",
         "https://inaturalist-open-data.s3.amazonaws.com/photos", "/1/original.jpg"),
        ("http://127.0.0.1:8010/a.jpg", "http://127.0.0.1:8010", "/a.jpg"),
    ],
)  # fmt: skip
def test_urls_split_into_a_shared_prefix_and_a_suffix(url: str, prefix: str, suffix: str) -> None:
    assert split_url(url) == (prefix, suffix)
    assert prefix + suffix == url


def test_index_type_follows_collection_size() -> None:
    assert choose_index(5_000, 768, "auto") == "Flat"
    assert choose_index(2_000_000, 768, "auto").endswith(",PQ16")
    assert choose_index(2_000_000, 768, "auto").startswith("IVF")
    assert choose_index(5_000, 768, "ivfpq").startswith("IVF")
    assert choose_index(5_000, 768, "HNSW32") == "HNSW32"


def test_metadata_file_has_the_design_schema(tmp_path: Path) -> None:
    path = tmp_path / "metadata.duckdb"
    write_metadata(rows_for(40), path)
    con = duckdb.connect(str(path), read_only=True)
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='metadata'"
        ).fetchall()
    )
    assert types["id"] == "INTEGER" and types["uuid"] == "UUID" and types["url_prefix_id"] == "USMALLINT"
    assert types["has_url"] == "BOOLEAN" and types["in_bioclip2_training"] == "BOOLEAN" and types["order"] == "VARCHAR"
    prefixes = con.execute("SELECT prefix FROM url_prefixes").fetchall()
    assert prefixes == [("https://inaturalist-open-data.s3.amazonaws.com/photos",)]
    suffix = con.execute("SELECT identifier_suffix FROM metadata WHERE id = 20").fetchone()
    assert suffix == ("/20/original.jpg",)
    assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'metadata'").fetchone() == (1,)
