"""CPU threads: the default count (physical cores) and small matmuls kept on the calling thread."""

from __future__ import annotations

import os

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


def test_openmp_waits_are_passive_on_a_busy_machine_unless_the_user_chose():
    import subprocess
    import sys

    def policy(load: float, *, first: str = "gemma_mtp", env: dict | None = None) -> str:
        second = "torch" if first == "gemma_mtp" else "gemma_mtp"
        code = (
            f"import os; os.getloadavg = lambda: ({load}, 0.0, 0.0)\n"
            f"import {first}, {second}; print(os.environ.get('OMP_WAIT_POLICY'))"
        )
        base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert policy(50.0) == "PASSIVE"  # busy: spinning waits would fight the other processes
    assert policy(0.0) == "None"  # idle: the runtime's spinning default is faster
    assert policy(50.0, env={"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice wins
    assert policy(50.0, first="torch") == "None"  # torch already loaded: too late, left alone
