"""The embedder's malloc policy: a large block freed and taken again comes from the heap, not fresh pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.embedder.memory import keep_freed_memory
from services.embedder.settings import EmbedderSettings
from stack.processes import ROOT

# 40 MB: above the largest mmap threshold glibc picks on its own (32 MiB), like a batch of 8's activations.
REUSE = """
import resource, sys
import numpy as np
from services.embedder.memory import keep_freed_memory
print(keep_freed_memory(int(sys.argv[1])))
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(5_000_000); del block  # the first time pages are touched they fault in any case
before = faults()
for _ in range(5):
    block = np.ones(5_000_000); del block
print(faults() - before)
"""


def _faults_on_reuse(threshold_mib: int) -> tuple[str, int]:
    # A fresh process: the policy is process-wide and glibc's adaptive threshold remembers what it has seen.
    # numpy would ask for transparent huge pages on large blocks (512 times fewer faults); torch does not.
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", REUSE, str(threshold_mib)], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    applied, faults = _faults_on_reuse(1024)
    assert applied == "True"
    assert faults < 500  # five 40 MB blocks from the heap again (9,766 pages each when mapped afresh)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_glibcs_own_policy_maps_each_large_block_afresh() -> None:
    # The control: without the setting the same loop faults every page in again, so the test above can fail.
    applied, faults = _faults_on_reuse(0)
    assert applied == "False"
    assert faults > 5 * 9_000


@pytest.mark.parametrize("threshold_mib", [-1, 2048])
def test_a_threshold_mallopt_cannot_take_is_refused(threshold_mib: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.2047"):
        keep_freed_memory(threshold_mib)
    with pytest.raises(ValidationError, match="malloc_threshold_mib"):
        EmbedderSettings(malloc_threshold_mib=threshold_mib)
