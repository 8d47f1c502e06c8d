"""Taxon-name suggestions: the index over a collection's names, and GET /v1/taxa on a real collection."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.vocabulary import FILTER_RANKS, name_key
from services.search.app import create_app
from services.search.taxa import TaxonIndex
from tests.search.conftest import Collection, unit_vectors, write_collection


def taxonomy(*ranks: str | None) -> tuple[str | None, ...]:
    return tuple(ranks) + (None,) * (len(FILTER_RANKS) - len(ranks))


ROWS = [
    (taxonomy("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus", "monarch"), 5),
    (taxonomy("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "gilippus", "queen"), 2),
    (taxonomy("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Papilionidae", "Papilio", "machaon", None), 3),
    (taxonomy("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major", "great tit"), 4),
    (taxonomy("Plantae", None, None, None, None, None, None, None), 1),
]


def test_a_prefix_finds_names_at_every_rank_most_frequent_first() -> None:
    index = TaxonIndex.from_rows(ROWS)
    found = index.suggest("pa", limit=10)
    assert not found.nearest
    assert [(t.name, t.rank, t.count) for t in found.taxa] == [
        ("Paridae", "family", 4),
        ("Parus", "genus", 4),
        ("Parus major", "species", 4),
        ("Passeriformes", "order", 4),
        ("Papilio", "genus", 3),
        ("Papilio machaon", "species", 3),
        ("Papilionidae", "family", 3),
    ]


def test_names_are_compared_by_the_name_key_and_counts_add_up() -> None:
    index = TaxonIndex.from_rows([*ROWS, (taxonomy("ANIMALIA"), 10)])
    found = index.suggest("  ANIM", rank="kingdom")
    assert [(t.name, t.count) for t in found.taxa] == [("Animalia", 24)]


def test_a_rank_and_a_limit_narrow_the_suggestions() -> None:
    index = TaxonIndex.from_rows(ROWS)
    assert [t.name for t in index.suggest("danaus", rank="species").taxa] == ["Danaus plexippus", "Danaus gilippus"]
    assert [t.name for t in index.suggest("", rank="common_name", limit=2).taxa] == ["monarch", "great tit"]
    assert [t.name for t in index.suggest("Dana", limit=1).taxa] == ["Danaus"]


def test_a_prefix_nothing_starts_with_gives_the_nearest_names() -> None:
    index = TaxonIndex.from_rows(ROWS)
    found = index.suggest("Lepidopterra", rank="order")
    assert found.nearest and [t.name for t in found.taxa] == ["Lepidoptera"]
    assert index.suggest("zzz", rank="genus").nearest


NAMES = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "Zs"]), min_size=1, max_size=12)


@given(names=st.lists(NAMES, min_size=1, max_size=20), cut=st.integers(min_value=0, max_value=12))
@settings(max_examples=60, deadline=None)
def test_every_name_is_found_by_every_prefix_of_its_key(names: list[str], cut: int) -> None:
    rows = [(taxonomy(None, None, None, None, None, name), 1) for name in names]
    index = TaxonIndex.from_rows(rows)
    for name in names:
        key = name_key(name)
        if not key:
            continue
        found = index.suggest(key[:cut], rank="genus", limit=50)
        assert not found.nearest
        assert all(name_key(t.name).startswith(key[:cut]) for t in found.taxa)
        assert key in {name_key(t.name) for t in found.taxa}


def test_the_service_suggests_taxa_from_its_collection(tmp_path: Path) -> None:
    rows = [
        {
            "url": None, "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "order": "Lepidoptera",
            "family": "Nymphalidae", "genus": "Danaus", "species": "plexippus" if i < 7 else "gilippus",
            "common_name": "monarch" if i < 7 else "queen", "source_dataset": "gbif", "source_id": str(i),
            "publisher": "iNaturalist.org", "img_type": "Image", "basisOfRecord": "HUMAN_OBSERVATION",
            "in_bioclip2_training": False,
        }
        for i in range(10)
    ]  # fmt: skip
    collection: Collection = write_collection(tmp_path, unit_vectors(10, 8), rows)
    with TestClient(create_app(collection.settings())) as client:
        for _ in range(200):  # the names load in the background once the service is ready
            answer = client.get("/v1/taxa", params={"prefix": "danaus ", "rank": "species"})
            if answer.status_code != 503:
                break
            assert answer.json()["error"]["code"] == "not_ready"
            time.sleep(0.05)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "taxa": [
                {"name": "Danaus plexippus", "rank": "species", "count": 7},
                {"name": "Danaus gilippus", "rank": "species", "count": 3},
            ],
            "nearest": False,
        }
        common = client.get("/v1/taxa", params={"prefix": "MON"}).json()
        assert common["taxa"] == [{"name": "monarch", "rank": "common_name", "count": 7}]
        nearest = client.get("/v1/taxa", params={"prefix": "Nymphalidea", "rank": "family"}).json()
        assert nearest["nearest"] and nearest["taxa"][0]["name"] == "Nymphalidae"
        for bad in ({"rank": "tribe"}, {"limit": "0"}, {"limit": "51"}):
            refused = client.get("/v1/taxa", params=bad)
            assert refused.status_code == 422 and refused.json()["error"]["code"]


SPELLINGS = st.sampled_from(["Quercus", "quercus", "QUERCUS", " Quercus ", "Ange\u0301lica", "Angélica", "angélica"])


@given(
    counted=st.lists(st.tuples(SPELLINGS, st.integers(min_value=1, max_value=4)), min_size=1, max_size=12),
    order=st.randoms(use_true_random=False),
)
@settings(max_examples=80, deadline=None)
def test_a_names_spelling_is_its_most_frequent_one_whatever_order_the_counts_come_in(
    counted: list[tuple[str, int]], order: object
) -> None:
    """DuckDB's GROUP BY lists names in no fixed order, the sidecar in its codes' order: the name shown must not
    depend on either (else /v1/taxa answered "quercus" or "Quercus" by which lookup ran, or by restart)."""
    shuffled = list(counted)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    names = [
        sorted((t.name, t.count) for t in TaxonIndex.from_counts({"genus": found}).suggest("", rank="genus").taxa)
        for found in (counted, shuffled)
    ]
    assert names[0] == names[1]
    per_spelling: dict[str, int] = {}
    for spelling, count in counted:
        per_spelling[spelling.strip()] = per_spelling.get(spelling.strip(), 0) + count
    for name, count in names[0]:
        same = {s: n for s, n in per_spelling.items() if name_key(s) == name_key(name)}
        assert count == sum(same.values())
        assert (-same[name], name) == min((-n, s) for s, n in same.items())
