"""What the hits say together: a similarity-weighted vote per rank, and a taxonomy tree with counts.

Real records miss ranks (a fish with no class, a record known only to its genus). Neither summary drops
such a hit: the vote counts it as not knowing the rank, and the tree shows the missing rank as an
unknown node (name null) and keeps the ranks below it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from gateway.schemas import Consensus, HitView, TreeNode
from services.common.vocabulary import RANKS

logger = logging.getLogger(__name__)


def consensus(hits: Sequence[HitView], rank: str) -> Consensus | None:
    """The taxon at `rank` with the largest share of the hits' similarity (negatives count zero).

    At species, a taxon is the scientific name (the vocabulary's rule: genus and epithet). Hits that do not
    know `rank` still weigh in the total (so `share` is of all the hits) and are counted in `unknown`;
    None when no hit knows the rank or every similarity is zero or less."""
    weights: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    unknown = 0
    for hit in hits:
        weight = max(0.0, float(hit.similarity))
        total += weight
        name = hit.taxonomy.at(rank)
        if name:
            weights[name] += weight
            counts[name] += 1
        else:
            unknown += 1
    if not weights or total <= 0:
        return None
    name = max(weights, key=lambda key: (weights[key], counts[key]))
    return Consensus(rank=rank, name=name, share=round(weights[name] / total, 4), hits=counts[name], unknown=unknown)  # type: ignore[arg-type]


def taxonomy_tree(hits: Sequence[HitView]) -> list[TreeNode]:
    """Nested kingdom -> species nodes with hit counts, largest first, unknown (name null) last among siblings.

    Every hit follows one path through all seven ranks, a rank it does not know being an unknown node, so
    each hit is counted once at every rank: the counts at each level add up to the hits, and a node's count
    is the sum of its children's."""
    root: dict[str | None, dict] = {}
    for hit in hits:
        children = root
        for rank in RANKS:
            name = hit.taxonomy.at(rank) or None
            child = children.setdefault(name, {"rank": rank, "name": name, "count": 0, "children": {}})
            child["count"] += 1
            children = child["children"]

    def finish(children: dict[str | None, dict]) -> list[TreeNode]:
        ordered = sorted(children.values(), key=lambda n: (n["name"] is None, -n["count"], n["name"] or ""))
        return [TreeNode(**{**node, "children": finish(node["children"])}) for node in ordered]

    return finish(root)
