"""CPU threads: the default count (physical cores) and small matmuls kept on the calling thread."""

from __future__ import annotations

import os
import time

import pytest
import torch

from gemma_mtp import ops
from gemma_mtp.models.common import Linear
from gemma_mtp.threads import physical_cores, set_threads, single_thread


def test_physical_cores_is_within_the_cpus_this_process_may_use():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_small_matmuls_run_on_one_thread_and_large_ones_on_all(monkeypatch):
    seen = []
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append(torch.get_num_threads())
        return real(x, w, b)

    monkeypatch.setattr(ops.F, "linear", spy)
    torch.set_num_threads(2)
    try:
        layer = Linear(128, 256, bias=False)
        small = torch.randn(4, 128)
        assert small.numel() * 256 < ops.SMALL_MATMUL
        assert torch.equal(layer(small), real(small, layer.weight))
        big = torch.randn(64, 128)
        big_weight = torch.randn(256, 128)
        assert big.numel() * 256 >= ops.SMALL_MATMUL
        ops.linear(big, big_weight)
        assert seen == [1, 2]  # the small product on one thread, the large one on both
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(1)


def test_set_threads_and_single_thread_restore():
    assert set_threads(2) == 2 and torch.get_num_threads() == 2
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


@pytest.fixture
def two_busy_processes():
    """Other processes spinning on every core (two at least), as on a shared machine."""
    import subprocess
    import sys

    n = max(2, physical_cores())
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)  # started and spinning
    yield
    for p in procs:
        p.kill()
        p.wait()


def test_busy_cpus_sees_other_processes_spinning(two_busy_processes):
    from gemma_mtp.threads import busy_cpus

    busy = busy_cpus(0.3)
    assert busy is not None and busy >= 1.0  # two spinning processes on any machine with 1+ CPUs


def test_busy_cpus_is_none_without_the_kernels_counters(tmp_path):
    from gemma_mtp.threads import busy_cpus

    assert busy_cpus(0.0, stat=str(tmp_path / "missing")) is None
    (tmp_path / "stat").write_text("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert busy_cpus(0.0, stat=str(tmp_path / "stat")) is None  # counters that do not advance


def test_waits_are_passive_only_when_other_processes_hold_a_share_of_the_cores():
    from gemma_mtp.threads import wait_policy_for

    assert wait_policy_for(0.0, 2) is None  # idle: the runtime's spinning default is faster
    assert wait_policy_for(0.1, 2) is None  # a shell, a log writer
    assert wait_policy_for(1.0, 2) == "PASSIVE"  # another process holds one of two cores
    assert wait_policy_for(1.0, 16) is None and wait_policy_for(8.0, 16) == "PASSIVE"


def test_openmp_waits_are_passive_on_a_busy_machine_unless_the_user_chose(two_busy_processes):
    import subprocess
    import sys

    def policy(*, first: str = "gemma_mtp", env: dict | None = None) -> str:
        second = "torch" if first == "gemma_mtp" else "gemma_mtp"
        code = f"import os, {first}, {second}; print(os.environ.get('OMP_WAIT_POLICY'))"
        base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert policy() == "PASSIVE"  # busy: spinning waits would fight the other processes
    assert policy(env={"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice wins
    assert policy(first="torch") == "None"  # torch already loaded: too late, left alone
