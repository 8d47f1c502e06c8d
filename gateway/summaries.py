"""What the hits say together: a similarity-weighted vote per rank, and a taxonomy tree with counts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def taxon_at(taxonomy: dict[str, Any], rank: str) -> str | None:
    """The name of a hit's taxon at `rank`; at species, the binomial (genus + epithet)."""
    if rank == "species":
        genus, epithet = taxonomy.get("genus"), taxonomy.get("species")
        return f"{genus} {epithet}" if genus and epithet else None
    return taxonomy.get(rank)


def consensus(hits: list[dict[str, Any]], rank: str) -> dict[str, Any] | None:
    """The taxon at `rank` with the largest share of the hits' similarity (negatives count zero)."""
    weights: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for hit in hits:
        weight = max(0.0, float(hit["similarity"]))
        total += weight
        name = taxon_at(hit["taxonomy"], rank)
        if name:
            weights[name] += weight
            counts[name] += 1
    if not weights or total <= 0:
        return None
    name = max(weights, key=lambda key: (weights[key], counts[key]))
    return {"rank": rank, "name": name, "share": round(weights[name] / total, 4), "hits": counts[name]}


def taxonomy_tree(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nested kingdom -> species nodes with hit counts, largest first; unknown ranks are skipped."""
    root: dict[str, Any] = {"children": {}}
    for hit in hits:
        node = root
        for rank in RANKS:
            name = taxon_at(hit["taxonomy"], rank)
            if not name:
                break
            child = node["children"].setdefault(name, {"rank": rank, "name": name, "count": 0, "children": {}})
            child["count"] += 1
            node = child

    def finish(children: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        ordered = sorted(children.values(), key=lambda n: (-n["count"], n["name"]))
        return [{**node, "children": finish(node["children"])} for node in ordered]

    return finish(root["children"])
