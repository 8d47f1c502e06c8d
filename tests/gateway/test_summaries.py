"""The gateway's pure parts: consensus vote, taxonomy tree, query ids, rate limit, export."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.export import hits_csv
from gateway.query_cache import CachedQuery, QueryCache, image_query_id, mean_direction, text_query_id
from gateway.rate_limit import SlidingWindowLimiter
from gateway.schemas import HitView, TaxonFilter
from gateway.summaries import consensus, taxonomy_tree


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


def test_csv_export_has_the_links_and_defuses_formulas() -> None:
    hit = _hit(
        0.9, "Danaus", "plexippus", record_id=7, image_url="https://example.org/a.jpg",
        source_record_url="https://www.gbif.org/occurrence/1",
    )  # fmt: skip
    hit.taxonomy.common_name = "=HYPERLINK(1)"
    rows = list(csv.DictReader(io.StringIO(hits_csv([hit]))))
    assert rows[0]["record_id"] == "7" and rows[0]["genus"] == "Danaus"
    assert rows[0]["image_url"] == "https://example.org/a.jpg"
    assert rows[0]["source_record_url"].endswith("/occurrence/1")
    assert rows[0]["common_name"] == "'=HYPERLINK(1)"
