"""The images' rights: licence and rights columns carried from the metadata into records, by every lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from collection.sidecar import write_sidecar
from services.search.app import create_app
from services.search.lookup import default_sidecar_path
from services.search.metadata import RIGHTS_COLUMNS, rights_columns
from services.search.settings import METADATA_FILE
from tests.search.conftest import Collection, rows_for, unit_vectors, write_collection

LICENCES = ("CC-BY-4.0", "CC0-1.0", None)


def with_rights(rows: list[dict[str, Any]], names: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Rows with a licence, a rights holder and a statement under the given column names; every third none."""
    licence, holder, statement = names
    return [
        row | {licence: LICENCES[i % 3], holder: f"Photographer {i}" if i % 3 != 2 else None,
               statement: "All rights reserved" if i % 3 == 1 else None}
        for i, row in enumerate(rows)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def licensed(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    rows = with_rights(rows_for(60), ("license", "rightsHolder", "dcterms:rights"))
    return write_collection(tmp_path_factory.mktemp("licensed"), unit_vectors(60, 16), rows)


@pytest.mark.parametrize("lookup", [{"use_sidecar": True}, {"use_sidecar": False}])
def test_a_record_carries_the_licence_and_rights_the_metadata_holds(licensed: Collection, lookup: dict) -> None:
    with TestClient(create_app(licensed.settings(**lookup))) as client:
        assert client.get("/v1/stats").json()["lookup"] == ("sidecar" if lookup["use_sidecar"] else "duckdb")
        first, second, third = (client.get(f"/v1/records/{i}").json() for i in (0, 1, 2))
        hits = client.post("/v1/search", json={"vectors": [licensed.vectors[1].tolist()], "top_n": 3}).json()
    assert (first["license"], first["rights_holder"], first["rights"]) == ("CC-BY-4.0", "Photographer 0", None)
    assert (second["license"], second["rights"]) == ("CC0-1.0", "All rights reserved")
    assert (third["license"], third["rights_holder"], third["rights"]) == (None, None, None)
    top = hits["results"][0]["hits"][0]["record"]
    assert top["id"] == 1 and top["license"] == "CC0-1.0" and top["rights_holder"] == "Photographer 1"


def test_without_rights_columns_a_record_says_null(collection: Collection) -> None:
    with TestClient(create_app(collection.settings())) as client:
        record = client.get("/v1/records/3").json()
    assert record["license"] is None and record["rights_holder"] is None and record["rights"] is None


def test_a_sidecar_without_records_takes_the_rights_from_duckdb(tmp_path: Path) -> None:
    rows = with_rights(rows_for(30), ("licence", "rights_holder", "rights"))
    collection = write_collection(tmp_path, unit_vectors(30, 16), rows)
    metadata = collection.folder / METADATA_FILE
    write_sidecar(metadata, default_sidecar_path(metadata), records=False)
    with TestClient(create_app(collection.settings())) as client:
        assert client.get("/v1/stats").json()["lookup"] == "sidecar"
        record = client.get("/v1/records/4").json()
    assert record["license"] == "CC0-1.0" and record["rights_holder"] == "Photographer 4"


def test_namespaced_rights_columns_of_a_metadata_file_are_read(tmp_path: Path) -> None:
    """A file made elsewhere, with Darwin Core's namespaced names, gets its sidecar made again and is read."""
    collection = write_collection(tmp_path, unit_vectors(20, 16), rows_for(20))
    metadata = collection.folder / METADATA_FILE
    with duckdb.connect(str(metadata)) as con:
        con.execute('ALTER TABLE metadata ADD COLUMN "dcterms:license" VARCHAR')
        con.execute('ALTER TABLE metadata ADD COLUMN "dcterms:rightsHolder" VARCHAR')
        con.execute("""UPDATE metadata SET "dcterms:license" = 'http://creativecommons.org/licenses/by/4.0/',
                       "dcterms:rightsHolder" = 'Museum ' || id""")
    write_sidecar(metadata, default_sidecar_path(metadata))
    with TestClient(create_app(collection.settings())) as client:
        assert client.get("/v1/stats").json()["lookup"] == "sidecar"
        record = client.get("/v1/records/7").json()
    assert record["license"] == "http://creativecommons.org/licenses/by/4.0/"
    assert record["rights_holder"] == "Museum 7" and record["rights"] is None


def test_rights_columns_take_the_first_accepted_name_of_each_field() -> None:
    assert rights_columns(["id", "License", "RIGHTSHOLDER", "genus"]) == {
        "License": "license",
        "RIGHTSHOLDER": "rights_holder",
    }
    # Both spellings present: the first accepted name wins, the other column is not read.
    assert rights_columns(["licence", "license"]) == {"license": "license"}
    assert rights_columns(["creator", "publisher"]) == {}


@given(st.lists(st.sampled_from([n for names in RIGHTS_COLUMNS.values() for n in names] + ["genus", "x"]), unique=True))
def test_each_rights_field_comes_from_at_most_one_column(present: list[str]) -> None:
    found = rights_columns(present)
    assert len(set(found.values())) == len(found)
    assert set(found) <= set(present)
    for field, names in RIGHTS_COLUMNS.items():
        accepted = [n for n in present if n.lower() in {a.lower() for a in names}]
        assert (field in found.values()) == bool(accepted)
