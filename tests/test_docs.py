"""The docs that are generated from code still match it."""

from __future__ import annotations

from pathlib import Path

from stack.settings_doc import replace_block

ROOT = Path(__file__).resolve().parent.parent


def test_operations_settings_tables_match_the_settings_classes() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    assert replace_block(text) == text, "docs/operations.md is stale: run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make run" in head and "make test" in head
