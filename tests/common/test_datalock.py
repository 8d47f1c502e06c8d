"""The data folder's lock file as read back: a file that is not a lock is no lock, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collection.state import data_state
from services.common.datalock import LOCK_FILE, LOCK_FORMAT, read_lock, read_pins

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize(
    "content",
    ["[1]", "null", '"lock"', "{broken", '{"format": 99}', '{"format": 1, "parts": []}',
     '{"format": 1, "parts": {"model": "imageomics/bioclip-2"}}',
     '{"format": 1, "parts": {"collection": {"x": 1}, "labels": {"x": 1}, "model": {"x": 1}}}'],
)  # fmt: skip
def test_a_file_that_is_not_a_lock_is_read_as_none(tmp_path: Path, content: str) -> None:
    (tmp_path / LOCK_FILE).write_text(content)
    assert read_lock(tmp_path) is None
    assert read_pins(tmp_path) == {}
    assert data_state(tmp_path).kind == "absent"


# Parts shaped like the downloader's (its names and keys), with any JSON where a value goes.
PART = st.dictionaries(st.sampled_from(["repo", "repo_type", "revision", "commit", "files", "cache_dir"]), JSON)
PARTS = JSON | st.dictionaries(st.sampled_from(["collection", "labels", "model"]), PART | JSON, max_size=3)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=PARTS)
def test_any_json_as_the_lock_s_parts_is_a_state_never_an_exception(tmp_path: Path, parts: object) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"format": LOCK_FORMAT, "parts": parts}))
    lock = read_lock(tmp_path)
    assert lock is None or isinstance(lock["parts"], dict)
    read_pins(tmp_path)
    assert data_state(tmp_path).kind in {"absent", "partial", "complete"}
