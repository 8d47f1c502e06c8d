"""Zero-shot prediction: probabilities over label vectors, summed up the taxonomy, top k.

probabilities = softmax(exp(logit_scale) * image_vector @ text_matrix), as pybioclip computes them;
a rank above species gets the sum of its species' probabilities. A clade restriction takes the
softmax over that clade's species alone, so the answer is the best guess within it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import DimensionMismatch, InvalidVector
from services.common.vocabulary import RANKS, name_key
from services.embedder.errors import InvalidClade, UnknownClade
from services.embedder.labels import SPECIES, TreeOfLife, species_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    name: str
    probability: float
    rank: str | None = None  # None for a request's own labels
    path: tuple[str, ...] | None = None  # kingdom .. this rank, for TreeOfLife predictions
    common_name: str | None = None


def check_vectors(vectors: Sequence[Sequence[float]], dim: int) -> np.ndarray:
    """(B, dim) float32 unit vectors, or the caller's mistake named."""
    for index, vector in enumerate(vectors):
        if len(vector) != dim:
            raise DimensionMismatch(f"vector {index} has {len(vector)} values; this model's vectors have {dim}")
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1)
    if not np.all(np.isfinite(array)) or not np.all(norms > 0):
        raise InvalidVector("vectors must be finite and not all zeros")
    return array / norms[:, None]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # -inf stays -inf and becomes 0
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def probabilities(
    vectors: np.ndarray, matrix: np.ndarray, scale: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """(B, N) probabilities of each vector over the N label columns of `matrix` (dim x N).

    `allowed` (a boolean mask over the columns) restricts the softmax to those columns.
    """
    logits = scale * (vectors @ matrix)
    if allowed is not None:
        logits[:, ~allowed] = -np.inf
    return softmax(logits.astype(np.float64, copy=False))


def _top(scores: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest scores (among `candidates` when given), highest first."""
    pool = np.arange(len(scores)) if candidates is None else candidates
    k = min(k, len(pool))
    values = scores[pool]
    chosen = pool[np.argpartition(-values, k - 1)[:k]] if k < len(pool) else pool
    # Stable order for ties: by score, then by position, so answers are repeatable.
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def clade_mask(tree: TreeOfLife, rank: str, value: str) -> np.ndarray:
    """Which species lie within the clade `value` at `rank` (any group of that name, case-insensitive)."""
    depth = RANKS.index(rank)
    groups = tree.ranks[depth].by_name.get(name_key(value))
    if not groups:
        raise UnknownClade(f"no species of {rank} {value!r} among the labels")
    return np.isin(tree.ranks[depth].ids, np.asarray(groups, dtype=np.int32))


def predict_tree_of_life(
    vectors: np.ndarray,
    tree: TreeOfLife,
    scale: float,
    *,
    rank: str = "species",
    k: int = 5,
    clade: tuple[str, str] | None = None,
) -> list[list[Prediction]]:
    """Top-k taxa at `rank` for each vector, optionally within a clade (rank, name)."""
    depth = RANKS.index(rank)
    allowed = None
    if clade is not None:
        if RANKS.index(clade[0]) >= depth:
            raise InvalidClade(f"the clade's rank ({clade[0]}) must be above the rank predicted ({rank})")
        allowed = clade_mask(tree, *clade)
    probs = probabilities(vectors, tree.matrix, scale, allowed)
    groups = tree.ranks[depth]
    candidates = None if allowed is None else np.unique(groups.ids[allowed])
    results = []
    for row in probs:
        sums = np.bincount(groups.ids, weights=row, minlength=len(groups.paths))
        predictions = []
        for group in _top(sums, k, candidates):
            path = groups.paths[group]
            if depth == SPECIES:
                name = species_name(path)
                common = tree.common_names[int(groups.first[group])]
            else:
                name, common = path[depth], None
            predictions.append(
                Prediction(name=name or f"unknown {rank}", probability=float(sums[group]), rank=rank, path=path,
                           common_name=common)
            )  # fmt: skip
        results.append(predictions)
    return results


def predict_labels(
    vectors: np.ndarray, labels: Sequence[str], matrix: np.ndarray, scale: float, k: int
) -> list[list[Prediction]]:
    """Top-k of a request's own labels (columns of `matrix`, in the order of `labels`) for each vector."""
    probs = probabilities(vectors, matrix, scale)
    return [[Prediction(name=labels[i], probability=float(row[i])) for i in _top(row, k)] for row in probs]
