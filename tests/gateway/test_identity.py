"""What a permalink records of the index: a downloaded collection by repo and commit, others by shape."""

from __future__ import annotations

from gateway.clients import index_identity


def test_a_downloaded_collection_is_named_by_repo_and_commit() -> None:
    pin = {"repo": "imageomics/bioclip-image-search-lite", "revision": "main", "commit": "0123456789abcdef" * 2}
    stats = {"index_type": "IndexIVFPQ", "vectors": 10, "dim": 768, "collection": pin}
    assert index_identity(stats) == "imageomics/bioclip-image-search-lite@0123456789ab"


def test_any_other_index_is_named_by_type_and_shape() -> None:
    assert index_identity({"index_type": "IndexFlatIP", "vectors": 300, "dim": 32, "collection": None}) == (
        "IndexFlatIP:300x32"
    )
