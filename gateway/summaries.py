"""What the hits say together: a similarity-weighted vote per rank, and a taxonomy tree with counts."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from gateway.schemas import Consensus, HitView, TreeNode
from services.common.vocabulary import RANKS

logger = logging.getLogger(__name__)


def consensus(hits: Sequence[HitView], rank: str) -> Consensus | None:
    """The taxon at `rank` with the largest share of the hits' similarity (negatives count zero).

    At species, a taxon is the scientific name (the vocabulary's rule: genus and epithet)."""
    weights: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for hit in hits:
        weight = max(0.0, float(hit.similarity))
        total += weight
        name = hit.taxonomy.at(rank)
        if name:
            weights[name] += weight
            counts[name] += 1
    if not weights or total <= 0:
        return None
    name = max(weights, key=lambda key: (weights[key], counts[key]))
    return Consensus(rank=rank, name=name, share=round(weights[name] / total, 4), hits=counts[name])  # type: ignore[arg-type]


def taxonomy_tree(hits: Sequence[HitView]) -> list[TreeNode]:
    """Nested kingdom -> species nodes with hit counts, largest first; unknown ranks are skipped."""
    root: dict[str, dict] = {}
    for hit in hits:
        children = root
        for rank in RANKS:
            name = hit.taxonomy.at(rank)
            if not name:
                break
            child = children.setdefault(name, {"rank": rank, "name": name, "count": 0, "children": {}})
            child["count"] += 1
            children = child["children"]

    def finish(children: dict[str, dict]) -> list[TreeNode]:
        ordered = sorted(children.values(), key=lambda n: (-n["count"], n["name"]))
        return [TreeNode(**{**node, "children": finish(node["children"])}) for node in ordered]

    return finish(root)
