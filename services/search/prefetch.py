"""Reading the collection's files into the page cache after start-up (SEARCH_PREFETCH), so that the first
queries after a restart do not wait for the disk: what `vmtouch -t` or `cat file > /dev/null` does.

A memory-mapped index and the lookup sidecar are paged in as queries touch them; on a cold page cache the
first searches at 200M vectors took ~0.1-1 s each (docs/benchmarks/scale.md). Reading the files once,
sequentially, costs their size in disk reads (14.4 GB in 28 s there) and no process memory: the pages
belong to the kernel's cache, which may drop them again under memory pressure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024  # bytes read at a time into one reused buffer: a stop is noticed within one chunk


@dataclass(frozen=True)
class Prefetched:
    """What a prefetch read: whole files, bytes in all (a stopped file's part included), wall seconds."""

    files: int
    bytes: int
    seconds: float
    stopped: bool


def prefetch(paths: Sequence[Path], *, stop: threading.Event, chunk: int = CHUNK) -> Prefetched:
    """Read each file front to back, in the order given, `chunk` bytes at a time; nothing is kept.

    Stops between chunks once `stop` is set. A file that cannot be read is skipped with a warning (the service
    reads it again when a query needs it, and fails there as it would have)."""
    buffer = memoryview(bytearray(chunk))
    started = time.perf_counter()
    done = read = 0
    for path in paths:
        if stop.is_set():
            break
        try:
            with path.open("rb", buffering=0) as handle:
                if hasattr(os, "posix_fadvise"):
                    # Sequential: the kernel reads further ahead of each read.
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while not stop.is_set():
                    count = handle.readinto(buffer)
                    if not count:
                        done += 1
                        break
                    read += count
        except OSError as exc:
            logger.warning("could not prefetch %s: %s", path, exc)
    return Prefetched(files=done, bytes=read, seconds=time.perf_counter() - started, stopped=stop.is_set())
