"""What one target forward over T positions costs on the CPU, and how much of it the matmuls are.

    .venv/bin/python benchmarks/bench_forward_split.py [--threads 2] [--positions 1,2,4,8] [--split]

Loads the Gemma 3 270M Q4_K_M GGUF the default way (the gguf kernel on the file's blocks, float32
activations; `--kernel q8` for the unpacked block-int8 format), runs one forward + logits over T
new positions after a short context, with logits at every position (what verifying T - 1 drafted
tokens costs), best of 5 x 5 calls: `total_ms` and its ratio to T = 1. Then (`--split`) the same
with the decoder layers on their module path (no native layer blocks) and every native matmul
replaced by a zero-filled output of the right shape: `kernel_ms` (the difference) is the matmuls'
share, `rest_ms` Python/ATen dispatch, norms, rotary, attention and the cache on the module path.
Rows go to benchmarks/results/forward_split.jsonl.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, timestamp

import gemma_mtp
import gemma_mtp.models.gemma as gemma_model
from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.quant.blocks import GGUFBlockWeight, GGUFMultiWeight
from gemma_mtp.quant.q8 import Q8BlockWeight

WEIGHTS = (GGUFBlockWeight, GGUFMultiWeight, Q8BlockWeight)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--positions", default="1,2,4")
    ap.add_argument("--kernel", choices=["gguf", "q8"], default="gguf")
    ap.add_argument("--split", action="store_true", help="also time the forward without its matmuls")
    ap.add_argument("--out", default=str(RESULTS / "forward_split.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = {t: args.kernel for t in ("Q8_0", "Q5_0", "Q4_K", "Q6_K")}
    model = gemma_mtp.load(str(gemma3_270m_gguf()), ctx_size=1024, kernels=kernels).target
    cache = model.make_cache(batch_size=1, max_context=1024, max_draft=8)
    with torch.no_grad():
        model.forward(torch.tensor([[2, 100, 200, 300]]), torch.arange(4)[None], cache)

    @torch.no_grad()
    def step(t: int) -> None:  # the same positions every time: the cache overwrites them in place
        hidden = model.forward(torch.full((1, t), 5), torch.arange(4, 4 + t)[None], cache).hidden
        model.logits(hidden)

    def best_ms(t: int) -> float:
        for _ in range(3):
            step(t)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(5):
                step(t)
            runs.append((time.perf_counter() - start) / 5 * 1e3)
        return min(runs)

    positions = [int(p) for p in args.positions.split(",")]
    total = {t: best_ms(t) for t in positions}
    rest = {}
    if args.split:
        real = {cls: cls.linear for cls in WEIGHTS}
        native_path = gemma_model.ops_for
        gemma_model.ops_for = lambda x: None
        for cls in WEIGHTS:
            cls.linear = lambda self, x: torch.zeros(x.shape[0], self.out_features)
        try:
            rest = {t: best_ms(t) for t in positions}
        finally:
            gemma_model.ops_for = native_path
            for cls, fn in real.items():
                cls.linear = fn
    common = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "kernel": args.kernel,
        "commit": git_commit(),
        "timestamp": timestamp(),
    }
    rows = [
        {**common, "T": t, "total_ms": total[t], "ratio": total[t] / total[positions[0]]}
        | ({"kernel_ms": total[t] - rest[t], "rest_ms": rest[t]} if rest else {})
        for t in positions
    ]
    append_jsonl(args.out, rows)
    print(format_table(rows, ["T", "total_ms", "ratio"] + (["kernel_ms", "rest_ms"] if rest else [])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
