"""The request labels' vector cache: each label embedded once while it is among the most recently used."""

from __future__ import annotations

import numpy as np

from services.embedder.labels import LabelVectors


class _Counting:
    """Stands in for the text tower: a fixed unit vector per label, and a count of what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, labels: list[str]) -> np.ndarray:
        self.asked += labels
        return np.stack([np.eye(8, dtype=np.float32)[hash(label) % 8] for label in labels])


def test_label_vectors_are_embedded_once_and_the_least_recently_used_is_forgotten() -> None:
    embed = _Counting()
    cache = LabelVectors(embed, capacity=2)
    first = cache.matrix(["cat", "dog"])
    assert first.shape == (8, 2) and embed.asked == ["cat", "dog"]
    cache.matrix(["cat"])  # dog is now the least recently used
    cache.matrix(["owl"])  # ... and is forgotten
    assert embed.asked == ["cat", "dog", "owl"]
    cache.matrix(["cat", "owl", "dog"])
    assert embed.asked == ["cat", "dog", "owl", "dog"]
    assert np.array_equal(cache.matrix(["dog", "cat"]), first[:, ::-1])


def test_a_zero_capacity_label_cache_embeds_every_time() -> None:
    embed = _Counting()
    cache = LabelVectors(embed, capacity=0)
    cache.matrix(["cat", "cat"])
    cache.matrix(["cat"])
    assert embed.asked == ["cat", "cat"]
