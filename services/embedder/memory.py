"""The C allocator's policy for the model's large, short-lived tensors (glibc's malloc thresholds).

PyTorch takes every CPU tensor from malloc and frees it as soon as it is dead. glibc serves a block above its
mmap threshold with a fresh mmap() and hands it back with munmap(), and gives the top of its heaps back to the
kernel above its trim threshold; it raises the mmap threshold as it sees large blocks freed, but never above
32 MiB. A ViT-L/14 pass over 8 images frees and takes again blocks just above that (8 x 257 x 4096 float32 =
34 MB for each MLP activation, 8 x 16 x 257 x 257 for each attention map), so every pass page-faults them all
in again, zeroed by the kernel. Measured in the service on 2 cores (docs/benchmarks/embedder.md, 32 images from 8
clients): 1.86M minor faults and 7.2 s of system time with glibc's policy, 85k and 3.0 s with both thresholds at
1 GiB, and the passes 9-11% faster. The price: memory a pass freed stays in the process for the next (at most the
largest pass's working set: 31 MB more resident after that run).

The limit: glibc gives every thread but the main one an arena of heaps of at most 64 MiB, and a block that does not
fit in one is mapped afresh whatever the thresholds say. The model runs on a thread of its own, so activations
above 64 MiB (ViT-L/14 at batches of more than 15 images) still fault in on every pass, and an emptied heap is
unmapped; `MALLOC_ARENA_MAX=1` in the environment puts every thread on the main heap (measured: no faster here).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MIB = 1 << 20


def keep_freed_memory(threshold_mib: int) -> bool:
    """Set glibc's mmap and trim thresholds to `threshold_mib` MiB: blocks up to that size are served from, and
    freed back into, the heap instead of the kernel. Process-wide; applies to allocations made after the call.

    Returns whether the thresholds were set: False for 0 (glibc's own adaptive policy is kept), or where the C
    library is not glibc (musl, macOS: nothing to set; logged). Raises ValueError outside 0..2047 (mallopt takes
    a C int of bytes).
    """
    if not 0 <= threshold_mib < 2048:
        raise ValueError(f"threshold_mib must be within 0..2047, not {threshold_mib}")
    if threshold_mib == 0:
        return False
    if platform.libc_ver()[0] != "glibc":
        logger.info("malloc thresholds left as they are: the C library is not glibc")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    value = threshold_mib * MIB
    if not (libc.mallopt(M_MMAP_THRESHOLD, value) and libc.mallopt(M_TRIM_THRESHOLD, value)):
        logger.warning("glibc refused malloc thresholds of %d MiB; its own policy stays", threshold_mib)
        return False
    logger.info("malloc: blocks up to %d MiB are reused from the heap (glibc mmap and trim thresholds)", threshold_mib)
    return True
