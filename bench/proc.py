"""A process's own counters from /proc/PID/stat (Linux): CPU seconds and page faults, all threads together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStat:
    minor_faults: int  # pages mapped in without reading from disk (fresh, zeroed or already cached)
    major_faults: int  # pages that had to be read from disk
    user_s: float
    system_s: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def proc_stat(pid: int) -> ProcStat:
    """The counters so far; fields per proc(5): minflt 10, majflt 12, utime 14, stime 15 (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    tick = os.sysconf("SC_CLK_TCK")
    return ProcStat(int(fields[7]), int(fields[9]), int(fields[11]) / tick, int(fields[12]) / tick)
