"""Label sets for zero-shot prediction: the TreeOfLife text embeddings, and request labels' text vectors.

The TreeOfLife files are the ones pybioclip reads (dataset `imageomics/TreeOfLife-200M`):
`txt_emb_species.npy`, float, shape (dim, N), one text vector per species, and
`txt_emb_species.json`, N entries `[[the seven ranks, kingdom .. species epithet], common_name]`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from services.common.vocabulary import RANKS, name_key, scientific_name

logger = logging.getLogger(__name__)

SPECIES = len(RANKS) - 1
EMBEDDINGS_FILE = "txt_emb_species.npy"
NAMES_FILE = "txt_emb_species.json"


class LabelsError(ValueError):
    """The label files are missing or malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RankGroups:
    """The species grouped at one rank: species i belongs to group `ids[i]`; groups are full paths
    from kingdom down to this rank, so one genus name under two families is two groups."""

    ids: np.ndarray  # (N,) int32
    paths: list[tuple[str, ...]]
    first: np.ndarray  # (groups,) the first species of each group, whose common name a species group shows
    by_name: dict[str, list[int]]  # name_key of the name at this rank -> group ids


@dataclass
class TreeOfLife:
    """Species text vectors and their taxonomy, grouped once per rank at load."""

    matrix: np.ndarray  # (dim, N) float32, columns as in the file
    taxa: list[tuple[str, ...]]  # N 7-tuples, kingdom .. species epithet
    common_names: list[str | None]
    ranks: list[RankGroups] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def __len__(self) -> int:
        return len(self.taxa)

    @classmethod
    def build(cls, matrix: np.ndarray, entries: Sequence[object]) -> TreeOfLife:
        if matrix.ndim != 2:
            raise LabelsError(f"{EMBEDDINGS_FILE} must be a 2-d array (dim x species), not shape {matrix.shape}")
        if matrix.shape[1] != len(entries):
            raise LabelsError(
                f"{EMBEDDINGS_FILE} has {matrix.shape[1]} columns but {NAMES_FILE} has {len(entries)} entries"
            )
        taxa: list[tuple[str, ...]] = []
        common: list[str | None] = []
        for index, entry in enumerate(entries):
            try:
                names, common_name = entry  # type: ignore[misc]
                path = tuple("" if name is None else str(name).strip() for name in names)
            except (TypeError, ValueError) as exc:
                raise LabelsError(f"{NAMES_FILE} entry {index} is not [[7 names], common_name]") from exc
            if len(path) != len(RANKS):
                raise LabelsError(f"{NAMES_FILE} entry {index} has {len(path)} names, not {len(RANKS)}")
            taxa.append(path)
            common.append(str(common_name).strip() or None if common_name else None)
        tree = cls(np.ascontiguousarray(matrix, dtype=np.float32), taxa, common)
        tree.ranks = [tree._group(depth) for depth in range(len(RANKS))]
        return tree

    def _group(self, depth: int) -> RankGroups:
        index: dict[tuple[str, ...], int] = {}
        ids = np.empty(len(self.taxa), dtype=np.int32)
        first: list[int] = []
        for i, taxon in enumerate(self.taxa):
            group = index.setdefault(taxon[: depth + 1], len(index))
            if group == len(first):
                first.append(i)
            ids[i] = group
        paths = list(index)
        by_name: dict[str, list[int]] = {}
        for group, path in enumerate(paths):
            name = species_name(path) if depth == SPECIES else path[depth]
            if name:
                by_name.setdefault(name_key(name), []).append(group)
        return RankGroups(ids, paths, np.asarray(first, dtype=np.int64), by_name)


def species_name(path: tuple[str, ...]) -> str | None:
    """The vocabulary's scientific name of a kingdom .. epithet path; None unless genus and epithet are known."""
    return scientific_name(path[SPECIES - 1], path[SPECIES])


def find_files(folder: Path) -> tuple[Path, Path]:
    """The two files, directly in `folder` or in its `embeddings/` (the dataset's own layout)."""
    for base in (folder, folder / "embeddings"):
        vectors, names = base / EMBEDDINGS_FILE, base / NAMES_FILE
        if vectors.is_file() and names.is_file():
            return vectors, names
    raise LabelsError(f"{folder} holds no {EMBEDDINGS_FILE} and {NAMES_FILE} (nor does {folder / 'embeddings'})")


def load_tree_of_life(folder: Path) -> TreeOfLife:
    vectors_path, names_path = find_files(folder)
    try:
        matrix = np.load(vectors_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LabelsError(f"{vectors_path} is not a readable .npy file ({exc})") from exc
    if not np.issubdtype(matrix.dtype, np.floating):
        raise LabelsError(f"{vectors_path} holds {matrix.dtype}, not floats")
    try:
        entries = json.loads(names_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabelsError(f"{names_path} is not readable JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise LabelsError(f"{names_path} must hold a JSON list")
    tree = TreeOfLife.build(matrix, entries)
    logger.info("loaded %d TreeOfLife species labels (dim %d) from %s", len(tree), tree.dim, vectors_path.parent)
    return tree


class LabelVectors:
    """Text vectors of request labels, made once each and kept (least recently used goes first).

    `embed` turns labels into unit vectors (the model's text tower); it runs in a worker thread,
    so the cache takes a lock.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], capacity: int) -> None:
        self._embed = embed
        self.capacity = capacity
        # cachetools is not thread-safe: every use takes the lock, as its documentation advises.
        self._vectors: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(capacity, 1))
        self._lock = threading.Lock()
        self.embedded = 0  # labels that went through the model, for tests and logs

    def matrix(self, labels: Sequence[str]) -> np.ndarray:
        """(dim, len(labels)) float32, columns in the order of `labels`."""
        with self._lock:
            known = {label: vector for label in labels if (vector := self._vectors.get(label)) is not None}
        missing = list(dict.fromkeys(label for label in labels if label not in known))
        if missing:
            fresh = self._embed(missing)
            self.embedded += len(missing)
            found = dict(zip(missing, fresh, strict=True))
            known.update(found)
            if self.capacity > 0:
                with self._lock:
                    for label, vector in found.items():
                        self._vectors[label] = vector
        return np.stack([known[label] for label in labels], axis=1).astype(np.float32, copy=False)
