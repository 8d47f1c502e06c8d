"""The data folder's lock file: which hub repos and commits its files came from.

`python -m collection download` writes it; search reports the collection's pin in /v1/stats so the
page and permalinks can name it; `make run` reads it to judge whether ./data is complete.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = "hub.lock.json"
LOCK_FORMAT = 1


@dataclass(frozen=True)
class Pin:
    """One part's source: the hub repo, the revision asked for (a branch, tag or commit) and the commit it was."""

    repo: str
    repo_type: str
    revision: str
    commit: str

    @property
    def label(self) -> str:
        """`repo@commit` with the commit cut to 12 hex digits, as the page shows it."""
        return f"{self.repo}@{self.commit[:12]}"


def read_lock(data_dir: Path) -> dict[str, Any] | None:
    """The lock file's content, or None when there is none or it cannot be read (logged)."""
    path = data_dir / LOCK_FILE
    if not path.is_file():
        return None
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable lock file %s: %s", path, exc)
        return None
    if not isinstance(lock, dict):
        logger.warning("ignoring lock file %s: a JSON %s, not an object", path, type(lock).__name__)
        return None
    if lock.get("format") != LOCK_FORMAT:
        logger.warning("ignoring lock file %s: format %r, expected %d", path, lock.get("format"), LOCK_FORMAT)
        return None
    parts = lock.get("parts", {})
    # Readers index parts by name and each part by key, as the downloader writes them: anything else
    # (a hand edit) is no lock at all rather than a crash later.
    if not isinstance(parts, dict) or not all(_usable_part(part) for part in parts.values()):
        logger.warning("ignoring lock file %s: its parts are not as the downloader writes them", path)
        return None
    return lock


def _usable_part(part: Any) -> bool:
    """A part as `python -m collection download` writes it: `repo` and `commit` texts, `files` an object of
    objects by path, `cache_dir` (the model's) a text."""
    return (
        isinstance(part, dict)
        and isinstance(part.get("repo"), str)
        and isinstance(part.get("commit"), str)
        and isinstance(part.get("files", {}), dict)
        and all(isinstance(entry, dict) for entry in part.get("files", {}).values())
        and isinstance(part.get("cache_dir", ""), str)
    )


def read_pins(data_dir: Path) -> dict[str, Pin]:
    """Each downloaded part's pin (`collection`, `labels`, `model`), from the lock file; empty without one."""
    lock = read_lock(data_dir) or {}
    pins: dict[str, Pin] = {}
    for name, part in (lock.get("parts") or {}).items():
        try:
            pins[name] = Pin(part["repo"], part["repo_type"], part["revision"], part["commit"])
        except (KeyError, TypeError):
            logger.warning("ignoring the lock file's entry for %s: it lacks repo, revision or commit", name)
    return pins
