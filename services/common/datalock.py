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
    if not isinstance(lock, dict) or lock.get("format") != LOCK_FORMAT:
        logger.warning("ignoring lock file %s: format %r, expected %d", path, lock.get("format"), LOCK_FORMAT)
        return None
    return lock


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
