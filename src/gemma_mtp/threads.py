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
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["physical_cores", "set_threads", "single_thread", "openmp_wait_policy", "busy_cpus"]


def busy_cpus(interval: float = 0.05, stat: str = "/proc/stat") -> float | None:
    """CPUs kept busy by other processes right now: non-idle time over ``interval`` seconds, from
    the kernel's counters (this process is still importing, so the busy time is someone else's).
    None where the counters cannot be read."""

    def sample() -> tuple[int, int, int] | None:
        try:
            lines = Path(stat).read_text().splitlines()
        except OSError:
            return None
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        total = next((line for line in lines if line.startswith("cpu ")), None)
        if total is None or cpus == 0:
            return None
        ticks = [int(v) for v in total.split()[1:]]
        idle = sum(ticks[3:5])  # idle, iowait
        return sum(ticks[:8]) - idle, sum(ticks[:8]), cpus  # guest time is already in user

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * second[2]


def openmp_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` when other processes keep the CPUs busy as we start (at least
    3/8 of the physical cores: one busy core of 2) and the user set no policy; before torch's
    OpenMP runtime starts.

    With the runtime's default (spin, then sleep) and two threads on a 2-core machine where another
    process is busy, every parallel region of a decode step spun against the other process: the 270M
    decoded at 0.9-6.4 tok/s with ``-t 2`` against 11-33 with passive waits. On an idle machine the
    spinning default is much faster: 86.3 vs 36.3 tok/s for plain greedy decoding of the demo target
    (`gemma-mtp bench --n-max 1,2,3 --p-min 0,0.6 --temp 0 -n 64 --reps 2 -t 2`, 2026-12-03). The
    signal is what the CPUs do now (50 ms of /proc/stat), not the 1-minute load average, which still
    counts the work this user just finished (a benchmark right after another one decoded passively
    at less than half speed). Only effective when gemma_mtp is imported before torch (the CLI always
    is); a program that imports torch first keeps its own setting.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    busy = busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            return
    policy = wait_policy_for(busy, physical_cores())
    if policy is not None:
        os.environ["OMP_WAIT_POLICY"] = policy


def wait_policy_for(busy: float, cores: int) -> str | None:
    """PASSIVE when ``busy`` CPUs (other processes') are at least 3/8 of ``cores``, else None (the
    runtime's spinning default)."""
    return "PASSIVE" if busy >= cores * 3 / 8 else None


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
