"""Small ops on a loaded machine: what a cross-thread barrier costs when another process holds a core.

A decode or verify step is made of small ops (a few positions times a 640-wide layer). With two
intra-op threads on a 2-core machine where another process is busy, every parallel region waits
for a thread the scheduler has parked: milliseconds for microseconds of work. This script times a
4-position float32 matmul (torch's F.linear, and our ops.linear that keeps small products on one
thread) and our GGUF Q8_0 kernel at 4 positions, each at 1 and 2 threads, on an
idle machine and with ``--load N`` busy-looping processes beside it, and reports medians with the
ratio of 2 threads to 1 in the same run.

    .venv/bin/python benchmarks/bench_small_ops.py --load 0 1 --reps 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, timestamp
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from gemma_mtp import native
from gemma_mtp.ops import linear as ops_linear
from gemma_mtp.sampling import make_generator, probs_from_logits, sample
from gemma_mtp.sampling_params import SamplingParams


def _busy() -> None:
    while True:
        pass


def _time(fn, reps: int) -> tuple[float, float]:
    """(median, 90th percentile) in µs: a stall behind a parked thread shows in the tail."""
    for _ in range(10):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return median(samples), float(np.percentile(samples, 90))


def _cases(rows: int, width: int, out: int):
    x = torch.randn(rows, width)
    w = torch.randn(out, width)
    cases = {
        "float32 matmul (F.linear)": lambda: torch.nn.functional.linear(x, w),
        "float32 matmul (ops.linear)": lambda: ops_linear(x, w),  # ours: one thread when small
    }
    logits = torch.randn(1, 262_144)
    params, generator = SamplingParams(temperature=0.3), make_generator(0)
    cases["sample a token, 262,144 words, temp 0.3"] = lambda: sample(
        probs_from_logits(logits, params), generator
    )
    ops = native.module()
    if ops is not None:
        blocks = torch.from_numpy(quantize(w.numpy().astype(np.float32), GGMLQuantizationType.Q8_0))
        q8 = int(GGMLQuantizationType.Q8_0)
        cases["gguf Q8_0 kernel"] = lambda: ops.gguf_mm(x, [blocks], [q8])
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, nargs="+", default=[0, 1], help="busy processes beside it")
    parser.add_argument("--rows", type=int, default=4, help="positions (default: 4)")
    parser.add_argument("--shape", default="640x2048", help="WIDTHxOUT (default: 640x2048)")
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    width, out = (int(v) for v in args.shape.split("x"))
    rows = []
    for load in args.load:
        procs = [mp.Process(target=_busy, daemon=True) for _ in range(load)]
        for p in procs:
            p.start()
        try:
            time.sleep(0.5)
            for name, fn in _cases(args.rows, width, out).items():
                times = {}
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    times[threads] = _time(fn, args.reps)
                rows.append(
                    {
                        "op": name,
                        "shape": f"{args.rows}x{width} @ {width}x{out}",
                        "busy_procs": load,
                        "us_1_thread": round(times[1][0], 1),
                        "us_2_threads": round(times[2][0], 1),
                        "ratio_2_to_1": round(times[2][0] / times[1][0], 2),
                        "p90_us_1_thread": round(times[1][1], 1),
                        "p90_us_2_threads": round(times[2][1], 1),
                    }
                )
        finally:
            for p in procs:
                p.terminate()
    meta = {"commit": git_commit(), "cpu": cpu_name(), "time": timestamp(), "reps": args.reps}
    append_jsonl(RESULTS / "small_ops.jsonl", [{**meta, **row} for row in rows])
    print(format_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
