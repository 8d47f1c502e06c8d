"""The gateway's pure parts: consensus vote, taxonomy tree, query ids, rate limit, export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.export import COLUMNS, hits_csv, negotiated, parameters_text, provenance
from gateway.query_cache import CachedQuery, QueryCache, image_query_id, mean_direction, text_query_id
from gateway.rate_limit import SlidingWindowLimiter
from gateway.schemas import HitView, SearchParameters, SearchResult, TaxonFilter
from gateway.summaries import consensus, taxonomy_tree
from services.common.vocabulary import RANKS


def _hit(similarity: float, genus: str, epithet: str, family: str = "Nymphalidae", **fields: object) -> HitView:
    taxonomy = {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "order": "Lepidoptera",
                "family": family, "genus": genus, "species": epithet}  # fmt: skip
    return HitView.model_validate({"rank": 1, "record_id": 0, **fields, "similarity": similarity, "taxonomy": taxonomy})


def test_consensus_weighs_by_similarity_not_by_count() -> None:
    hits = [_hit(0.95, "Danaus", "plexippus"), _hit(0.2, "Vanessa", "atalanta"), _hit(0.2, "Vanessa", "atalanta")]
    vote = consensus(hits, "species")
    assert vote is not None
    assert vote.model_dump() == {
        "rank": "species",
        "name": "Danaus plexippus",
        "share": round(0.95 / 1.35, 4),
        "hits": 1,
        "unknown": 0,
    }
    family = consensus(hits, "family")
    assert family is not None and family.share == 1.0


def test_consensus_of_no_hits_is_none() -> None:
    assert consensus([], "genus") is None


def test_tree_counts_hits_per_taxon_largest_first() -> None:
    hits = [_hit(0.9, "Danaus", "plexippus"), _hit(0.8, "Vanessa", "atalanta", "Nymphalidae"),
            _hit(0.7, "Pieris", "rapae", "Pieridae")]  # fmt: skip
    tree = [node.model_dump() for node in taxonomy_tree(hits)]
    assert [(n["name"], n["count"]) for n in tree] == [("Animalia", 3)]
    order = tree[0]["children"][0]["children"][0]["children"][0]
    assert order["name"] == "Lepidoptera"
    assert [(n["name"], n["count"]) for n in order["children"]] == [("Nymphalidae", 2), ("Pieridae", 1)]
    species = order["children"][0]["children"][0]["children"][0]
    assert species["rank"] == "species" and species["name"] == "Danaus plexippus" and species["children"] == []


def _holed(similarity: float, taxonomy: dict[str, str | None]) -> HitView:
    return HitView.model_validate({"rank": 1, "record_id": 0, "similarity": similarity, "taxonomy": taxonomy})


def test_a_missing_middle_rank_is_an_unknown_node_and_the_ranks_below_stay() -> None:
    goldfish = {"kingdom": "Animalia", "phylum": "Chordata", "class": None, "order": "Cypriniformes",
                "family": "Cyprinidae", "genus": "Carassius", "species": "auratus"}  # fmt: skip
    tree = [node.model_dump() for node in taxonomy_tree([_holed(0.9, goldfish)])]
    path = []
    nodes = tree
    while nodes:
        assert len(nodes) == 1
        path.append((nodes[0]["rank"], nodes[0]["name"], nodes[0]["count"]))
        nodes = nodes[0]["children"]
    assert path == [("kingdom", "Animalia", 1), ("phylum", "Chordata", 1), ("class", None, 1),
                    ("order", "Cypriniformes", 1), ("family", "Cyprinidae", 1), ("genus", "Carassius", 1),
                    ("species", "Carassius auratus", 1)]  # fmt: skip


def test_a_record_known_only_to_genus_is_in_the_tree_and_counted_unknown_by_the_vote() -> None:
    known = _hit(0.5, "Danaus", "plexippus")
    genus_only = _holed(0.9, {"genus": "Danaus"})
    tree = taxonomy_tree([known, genus_only])
    assert sum(node.count for node in tree) == 2
    assert [node.name for node in tree] == ["Animalia", None]  # unknown last
    vote = consensus([known, genus_only], "species")
    assert vote is not None and vote.name == "Danaus plexippus" and vote.unknown == 1
    assert vote.share == round(0.5 / 1.4, 4)
    genus = consensus([known, genus_only], "genus")
    assert genus is not None and genus.hits == 2 and genus.unknown == 0


_names = st.one_of(st.none(), st.sampled_from(["A", "B", "C"]))
_taxonomies = st.fixed_dictionaries({rank: _names for rank in RANKS})


@settings(max_examples=200, deadline=None)
@given(st.lists(_taxonomies, max_size=25))
def test_every_hit_is_in_the_tree_once_and_counts_add_up_at_every_level(taxonomies: list[dict]) -> None:
    hits = [_holed(0.5, taxonomy) for taxonomy in taxonomies]
    tree = taxonomy_tree(hits)
    # Each level (rank) counts every hit once; each node is the sum of its children; leaves are species.
    level = tree
    for rank in RANKS:
        assert all(node.rank == rank for node in level)
        assert sum(node.count for node in level) == len(hits)
        assert len({node.name for node in level}) <= len(level)
        next_level = []
        for node in level:
            if rank == RANKS[-1]:
                assert node.children == []
            else:
                assert node.count == sum(child.count for child in node.children)
                names = [child.name for child in node.children]
                assert len(set(names)) == len(names)  # one node per taxon under a parent
            next_level += node.children
        level = next_level
    # Each hit's path (unknowns as None) is one leaf with its count.
    leaves: dict[tuple, int] = {}

    def walk(nodes: list, path: tuple) -> None:
        for node in nodes:
            if node.children:
                walk(node.children, (*path, node.name))
            else:
                leaves[(*path, node.name)] = node.count

    walk(tree, ())
    expected: dict[tuple, int] = {}
    for hit in hits:
        key = tuple(hit.taxonomy.at(rank) for rank in RANKS)
        expected[key] = expected.get(key, 0) + 1
    assert leaves == expected


def test_the_same_photos_in_any_order_are_one_query() -> None:
    assert image_query_id([b"a", b"b"]) == image_query_id([b"b", b"a"]) != image_query_id([b"a"])
    assert text_query_id(" Apis mellifera ") == text_query_id("apis mellifera")


def test_query_cache_forgets_the_least_recently_used() -> None:
    cache = QueryCache(2)
    for name in ("a", "b"):
        cache.put(CachedQuery(name, "text", np.zeros(2, np.float32), name))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put(CachedQuery("c", "text", np.zeros(2, np.float32), "c"))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_several_photos_average_to_a_unit_vector() -> None:
    mean = mean_direction([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(mean, [2**-0.5, 2**-0.5], rtol=1e-6)


def test_rate_limit_is_a_sliding_minute_per_client() -> None:
    limiter = SlidingWindowLimiter(2)
    assert limiter.check("a", now=0.0) == 0 and limiter.check("a", now=1.0) == 0
    assert limiter.check("a", now=2.0) == pytest.approx(58.0)
    assert limiter.check("b", now=2.0) == 0
    assert limiter.check("a", now=60.5) == 0


def test_taxon_filter_parses_rank_and_value() -> None:
    assert TaxonFilter.parse("Order: Lepidoptera").model_dump() == {"rank": "order", "value": "Lepidoptera"}
    with pytest.raises(ValidationError):
        TaxonFilter.parse("tribe:Danaini")


def _result(hits: list[HitView]) -> SearchResult:
    params = SearchParameters(top_n=5, scope="inaturalist", filters=[TaxonFilter.parse("genus:Danaus")])
    return SearchResult.model_validate({
        "query": "text", "query_id": "txt-abc", "label": "monarch", "text": "monarch", "parameters": params,
        "exhausted": False, "hits": hits, "prediction": None, "consensus": None, "agreement": None, "tree": [],
        "identity": {"model": "m", "index": "i"}, "permalink": "/?text=monarch", "timings": {}, "took_ms": 1.0,
    })  # fmt: skip


PIN = {"repo": "imageomics/lite", "revision": "main", "commit": "a" * 40}
FOUND = {"model": "hf-hub:imageomics/bioclip-2", "index": "imageomics/lite@aaaaaaaaaaaa", "collection": PIN}


def test_csv_export_has_the_links_and_defuses_formulas() -> None:
    hit = _hit(
        0.9, "Danaus", "plexippus", record_id=7, image_url="https://example.org/a.jpg",
        source_record_url="https://www.gbif.org/occurrence/1", uuid="u-1", in_bioclip2_training=True,
    )  # fmt: skip
    hit.taxonomy.common_name = "=HYPERLINK(1)"
    cited = provenance(_result([hit]), FOUND, now=datetime(2026, 11, 30, 10, 0, 0, 123, tzinfo=UTC))
    text = hits_csv([hit], cited)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(text.splitlines()[0].split(",")) == COLUMNS
    assert rows[0]["record_id"] == "7" and rows[0]["genus"] == "Danaus"
    assert rows[0]["image_url"] == "https://example.org/a.jpg"
    assert rows[0]["source_record_url"].endswith("/occurrence/1")
    assert rows[0]["common_name"] == "'=HYPERLINK(1)"
    assert rows[0]["uuid"] == "u-1" and rows[0]["in_bioclip2_training"] == "True"


def test_csv_export_rows_cite_the_query_the_model_the_collection_and_the_date() -> None:
    hits = [_hit(0.9, "Danaus", "plexippus"), _hit(0.8, "Danaus", "gilippus")]
    cited = provenance(_result(hits), FOUND, now=datetime(2026, 11, 30, 10, 0, 0, 123, tzinfo=UTC))
    rows = list(csv.DictReader(io.StringIO(hits_csv(hits, cited))))
    assert len(rows) == 2 and rows[0]["exported_at"] == rows[1]["exported_at"] == "2026-11-30T10:00:00Z"
    assert rows[0]["query"] == "text" and rows[0]["label"] == "monarch" and rows[0]["query_id"] == "txt-abc"
    assert rows[0]["parameters"] == "top_n=5&scope=inaturalist&rank=species&predict=true&filter=genus%3ADanaus"
    assert rows[0]["model"] == "hf-hub:imageomics/bioclip-2"
    assert rows[0]["collection"] == f"imageomics/lite@{'a' * 40}"


def test_parameters_text_leaves_out_what_was_not_given() -> None:
    assert parameters_text(SearchParameters(predict=False)) == "top_n=24&scope=all&rank=species&predict=false"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "json"), ("", "json"), ("*/*", "json"), ("application/json", "json"), ("text/csv", "csv"),
        ("text/csv, application/json", "json"), ("text/csv, application/json;q=0.5", "csv"),
        ("text/csv;q=0.2, */*;q=0.1", "csv"), ("text/*", "json"), ("TEXT/CSV", "csv"), ("text/csv;q=0", "json"),
        ("text/csv;q=oops", "json"), ("text/html,application/xhtml+xml,*/*;q=0.8", "json"),
    ],
)  # fmt: skip
def test_accept_chooses_csv_only_when_it_is_preferred_to_json(accept: str | None, chosen: str) -> None:
    assert negotiated(accept) == chosen


@given(st.text(max_size=200))
def test_any_accept_header_chooses_a_format_without_failing(accept: str) -> None:
    assert negotiated(accept) in ("json", "csv")
