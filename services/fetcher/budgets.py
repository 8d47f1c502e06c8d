"""The byte budgets' memory across crashes: every reservation is a row in SQLite, committed (WAL,
synchronous=FULL: on disk) before the request it pays for leaves the machine.

A fetch first reserves the most it may receive (the size cap) and, once the source has answered,
settles the row to what it really sent. A crash between the two leaves the full reservation
counted, which can only over-count: a crash loop can never reset a budget. Rows older than the
longest budget window are pruned. All calls go through one worker thread, in order, so the
event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    policy TEXT NOT NULL,   -- the policy key whose budgets the bytes count against
    at REAL NOT NULL,       -- Unix time: when reserved, then when settled
    bytes INTEGER NOT NULL, -- reserved (the size cap) until settled, then received
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS reservations_at ON reservations (at);
"""
# Prune old rows after this many reservations (and at start-up).
_PRUNE_EVERY = 1000


class BudgetStoreError(Exception):
    """The store cannot record a reservation: the request must not leave."""


@dataclass(frozen=True)
class Counted:
    policy: str
    at: float  # Unix time
    bytes: int


class BudgetStore:
    """Reservations in one SQLite file at `path`; `keep_seconds` is the longest budget window."""

    def __init__(self, path: Path, keep_seconds: float) -> None:
        self.path = path
        self.keep_seconds = keep_seconds
        self._db: sqlite3.Connection | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="budget-store")
        self._since_prune = 0

    # -- blocking, on the worker thread -------------------------------------------------------------

    def _open(self) -> list[Counted]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        self._migrate_json(self.path.parent / "budgets.json")
        self._prune()
        rows = db.execute(
            "SELECT policy, at, bytes FROM reservations WHERE at > ? ORDER BY at", (time.time() - self.keep_seconds,)
        ).fetchall()
        return [Counted(policy, at, nbytes) for policy, at, nbytes in rows]

    def _migrate_json(self, old: Path) -> None:
        """Budgets saved by earlier versions (a JSON file of window buckets), read once, then set aside."""
        try:
            state = json.loads(old.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("could not read the old saved budgets at %s (%s); not migrating them", old, exc)
            return
        rows = []
        for key, windows in state.items():
            # Each window kept every bucket in its span; the longest one holds them all.
            longest = max(windows, key=lambda w: w["seconds"], default=None)
            for start, amount in longest["buckets"] if longest else []:
                # A bucket counts until its end leaves the window: date it at its end (never under-counts).
                end = float(start) + float(longest["seconds"]) / 360
                rows.append((key, end, math.ceil(float(amount))))
        assert self._db is not None
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO reservations (policy, at, bytes, settled) VALUES (?, ?, ?, 1)", rows)
        old.replace(old.with_name(old.name + ".migrated"))
        logger.info("migrated %d budget buckets from %s", len(rows), old)

    def _prune(self) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM reservations WHERE at < ?", (time.time() - self.keep_seconds,))
        self._since_prune = 0

    def _reserve(self, policy: str, nbytes: int) -> int:
        if self._db is None:
            raise BudgetStoreError(f"the budget store at {self.path} is not open")
        try:
            cursor = self._db.execute(
                "INSERT INTO reservations (policy, at, bytes) VALUES (?, ?, ?)", (policy, time.time(), nbytes)
            )
            self._since_prune += 1
            if self._since_prune >= _PRUNE_EVERY:
                self._prune()
        except sqlite3.Error as exc:
            raise BudgetStoreError(f"the budget store at {self.path} cannot record a reservation: {exc}") from exc
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _settle(self, row: int, nbytes: int) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(
                "UPDATE reservations SET bytes = ?, at = ?, settled = 1 WHERE id = ?", (nbytes, time.time(), row)
            )
        except sqlite3.Error as exc:  # the reservation stays counted in full: an over-count, never an under-count
            logger.warning("could not settle budget reservation %d in %s: %s", row, self.path, exc)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- from the event loop ------------------------------------------------------------------------

    async def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.wrap_future(self._worker.submit(fn, *args))

    async def open(self) -> list[Counted]:
        """Open (create) the file, migrate an old budgets.json beside it, and return what still counts
        (oldest first). Raises OSError or sqlite3.Error when the file cannot be used."""
        return await self._call(self._open)

    async def reserve(self, policy: str, nbytes: int) -> int:
        """Record a reservation durably; its row id. BudgetStoreError when it cannot be recorded."""
        return await self._call(self._reserve, policy, nbytes)

    def settle(self, row: int, nbytes: int) -> None:
        """Set the reservation to what was received (queued; does not wait, so it is safe in a finally)."""
        try:
            self._worker.submit(self._settle, row, nbytes)
        except RuntimeError:  # closed: the reservation stays counted in full
            logger.warning("budget reservation %d settled after the store closed; it counts in full", row)

    async def close(self) -> None:
        await self._call(self._close)
        self._worker.shutdown(wait=True)
