"""The field's terms are declared once, in services/common/vocabulary.py: this scan of the source tree fails
when a list of ranks, the list of scopes, or a search parameter's default or bound is typed anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.vocabulary import FILTER_RANKS, SCOPES, SearchParameters

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = ROOT / "services" / "common" / "vocabulary.py"
SOURCE_DIRS = ("services", "gateway", "collection", "stack", "bench")
SUFFIXES = {".py", ".js", ".html"}

_RANK = "|".join(FILTER_RANKS)
# Three or more rank names in a row: as string literals ("kingdom", "phylum", ...), as bare words in
# page text (kingdom, phylum, class), or as <option value="..."> elements.
RANK_RUNS = [
    re.compile(rf"""(["'])(?:{_RANK})\1(?:\s*,\s*(["'])(?:{_RANK})\2){{2,}}"""),
    re.compile(rf"\b(?:{_RANK})\b(?:\s*,\s*\b(?:{_RANK})\b){{2,}}"),
    re.compile(rf"""(?:<option[^>]*value=["'](?:{_RANK})["'][^>]*>[^<]*</option>\s*){{3,}}"""),
]
# The scopes other than `all` (too common a word), as string literals close together.
SCOPE_NAMES = [name for name in SCOPES if name != "all"]
PARAMETERS = "|".join(SearchParameters.model_fields)
DEFAULTS = [
    # Python: a typed field or argument with a literal default, or bounds beside a parameter's name.
    re.compile(rf"\b(?:{PARAMETERS})\s*:\s*[^=\n]*=\s*(?:Field\(\s*)?(?:-?\d|[\"'])"),
    re.compile(rf"\b(?:{PARAMETERS})\b[^\n]*\b(?:ge|le|gt|lt)\s*=\s*-?\d"),
    # JavaScript: a parameter with a literal fallback.
    re.compile(rf"\b(?:{PARAMETERS})\b[^\n]*\?\?\s*-?\d"),
    # HTML: an input named for a parameter with literal bounds or value.
    re.compile(rf"""name=["'](?:{PARAMETERS})["'][^>]*\b(?:min|max|value)=["']"""),
]


def source_files() -> list[Path]:
    files = [path for folder in SOURCE_DIRS for path in (ROOT / folder).rglob("*") if path.suffix in SUFFIXES]
    return sorted(path for path in files if path != VOCABULARY and "__pycache__" not in path.parts)


def _where(path: Path, text: str, start: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, start) + 1}"


def test_the_scan_covers_the_source_tree() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in source_files()}
    assert {"gateway/static/app.js", "gateway/static/index.html", "services/search/lookup.py"} <= names
    assert "collection/sidecar.py" in names


def test_the_patterns_find_what_they_look_for() -> None:
    """The check can fail: each pattern catches the kind of repetition it is for."""
    assert RANK_RUNS[0].search('RANKS = ("kingdom", "phylum", "class")')
    assert RANK_RUNS[1].search("ranks: kingdom, phylum, class, order")
    assert RANK_RUNS[2].search('<option value="order">O</option><option value="family">F</option>'
                               '<option value="genus">G</option>')  # fmt: skip
    assert DEFAULTS[0].search("    top_n: int = Field(10, ge=1)")
    assert DEFAULTS[0].search('    scope: str = "all"')
    assert DEFAULTS[2].search("top_n: number(els.topN) ?? 24,")
    assert DEFAULTS[3].search('<input id="top-n" name="top_n" min="1" max="200">')


@pytest.mark.parametrize("path", source_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_term_is_declared_outside_the_vocabulary(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found: list[str] = []
    for pattern in RANK_RUNS:
        found += [
            f"{_where(path, text, m.start())}: a list of ranks {m.group(0)[:60]!r}" for m in pattern.finditer(text)
        ]
    literals = [(m.start(), m.group(1)) for m in re.finditer(r"""["']({})["']""".format("|".join(SCOPE_NAMES)), text)]
    for start, _ in literals:
        near = {name for at, name in literals if 0 <= at - start < 400}
        if near == set(SCOPE_NAMES):
            found.append(f"{_where(path, text, start)}: the list of scopes")
            break
    for pattern in DEFAULTS:
        found += [f"{_where(path, text, m.start())}: a parameter default or bound {m.group(0)[:60]!r}"
                  for m in pattern.finditer(text)]  # fmt: skip
    assert not found, "declared outside services/common/vocabulary.py:\n" + "\n".join(found)
