"""CPU threads: the default (the machine's physical cores, as llama.cpp picks) and applying -t/--threads.

torch's intra-op pool and our native kernels (`at::parallel_for`) share one OpenMP runtime, so
`set_threads` sets both. Small ops stay on the calling thread whatever the count (the native
kernels' grain sizes; `ops.py`'s small float matmuls): on a 2-core machine where another process
holds a core, a parallel region waits for a parked thread for milliseconds of nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["physical_cores", "set_threads", "single_thread", "openmp_wait_policy"]


def openmp_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` when the machine is busy as we start (1-minute load average at
    least half the physical cores) and the user set no policy; before torch's OpenMP runtime starts.

    With the runtime's default (spin, then sleep) and two threads on a 2-core machine where another
    process is busy, every parallel region of a decode step spun against the other process: the 270M
    decoded at 0.9-6.4 tok/s with ``-t 2`` against 11-33 with passive waits. On an idle machine the
    spinning default is faster (median 53.9 vs 48.6 tok/s over 5 alternating runs each), so it stays
    there (2026-12-03, `gemma-mtp run -n 128 --temp 0 --spec-type none -t 2`). Only effective when
    gemma_mtp is imported before torch (the CLI always is); a program that imports torch first keeps
    its own setting.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    if load >= physical_cores() / 2:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); at least 1."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        cpu = phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not line.strip() and cpu is not None:
                if cpu in allowed:
                    cores.add((phys or "0", core if core is not None else str(cpu)))
                cpu = phys = core = None
    except (OSError, ValueError):
        cores = set()
    return max(1, len(cores) or len(allowed))


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: `physical_cores()`); returns the count applied."""
    import torch

    count = threads if threads is not None else physical_cores()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block's torch ops on the calling thread (setting the count costs well under 1 µs)."""
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
