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


def test_importing_gemma_mtp_first_makes_openmp_waits_passive_unless_the_user_chose():
    import subprocess
    import sys

    code = "import os, gemma_mtp, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "PASSIVE"
    mine = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True
    )
    assert mine.stdout.strip() == "ACTIVE"
    late = "import os, torch, gemma_mtp; print(os.environ.get('OMP_WAIT_POLICY'))"  # torch first: untouched
    assert (
        subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True).stdout.strip()
        == "None"
    )
