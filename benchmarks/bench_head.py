"""The exact pruned output head (`models/head.py`) against the full head, in one run, alternating.

    .venv/bin/python benchmarks/bench_head.py --reps 15 --decode-reps 3 -n 64

On the embedded Gemma 3 270M (Q8_0 tied head, 262,144 rows): for 1, 2 and 4 positions, the cost of a
target forward (cache of a fixed prompt, the forward at the same place every time, rolled back)
followed by the head — the full head's logits and argmax, or the pruned head's argmax — and of the
head alone; the exact rows the pruned head computed per position; then plain greedy decoding
through the Engine with the full and the pruned head (same engine, the head switched between
runs), decode tokens/s and whether the tokens are the same. Every measurement alternates full,
pruned, full, ... so that a change in machine load hits both alike; medians are reported.
``--dense`` builds the pruned head with other numbers of inputs multiplied exactly (each cached)
and measures them too. Rows go to ``benchmarks/results/head.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, git_dirty, median, timestamp

import gemma_mtp
import gemma_mtp.models.head_build as head_build
from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer

PROMPTS = {
    "prose": "The history of the printing press begins in the fifteenth century, when",
    "code": "def merge_sort(items):\n    if len(items) <= 1:\n        return items\n",
    "repeat": "one two three, one two three, one two three, one two",
}


def forward_cost(engine, head, widths, reps) -> list[dict]:
    """ms of forward + head and of the head alone over T positions, full and pruned, alternating."""
    target = engine.target
    tok = load_tokenizer(engine.load_options.model)
    ids = [2, *tok.encode(PROMPTS["prose"])]
    cache = target.make_cache(batch_size=1, max_context=len(ids) + 16, max_draft=8)
    with torch.inference_mode():
        target(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None], cache)
        base = cache.lengths.clone()
        rows = []
        for width in widths:
            tokens = torch.tensor([ids[-1:] + ids[1:width]])
            positions = torch.arange(len(ids) - 1, len(ids) - 1 + width)[None]
            times = {
                ("full", "step"): [],
                ("pruned", "step"): [],
                ("full", "head"): [],
                ("pruned", "head"): [],
            }
            before = (head.stats.positions, head.stats.exact_rows, head.stats.full_rows)
            limit = head.max_rows
            head.max_rows = max(limit, width)  # measure the pruned head at every width
            try:
                for rep in range(reps + 1):
                    for kind in ("full", "pruned"):
                        target.output_head = head if kind == "pruned" else None
                        t0 = time.perf_counter()
                        hidden = target(tokens, positions, cache).hidden
                        t1 = time.perf_counter()
                        target.argmax(hidden)
                        t2 = time.perf_counter()
                        cache.rollback(base)
                        if rep:  # the first round warms up
                            times[kind, "step"].append((t2 - t0) * 1e3)
                            times[kind, "head"].append((t2 - t1) * 1e3)
            finally:
                head.max_rows = limit
            positions_done = head.stats.positions - before[0]
            rows.append(
                {
                    "T": width,
                    "full step ms": median(times["full", "step"]),
                    "pruned step ms": median(times["pruned", "step"]),
                    "full head ms": median(times["full", "head"]),
                    "pruned head ms": median(times["pruned", "head"]),
                    "exact rows/pos": (head.stats.exact_rows - before[1]) / max(1, positions_done),
                    "full fallbacks": head.stats.full_rows - before[2],
                }
            )
            r = rows[-1]
            r["step ratio"] = r["full step ms"] / r["pruned step ms"]
    target.output_head = head
    return rows


def decode_speed(engine, head, n, reps) -> list[dict]:
    """Plain greedy decode tok/s per prompt, full vs pruned head, alternating."""
    tok = load_tokenizer(engine.load_options.model)
    greedy = SamplingParams(temperature=0)
    rows = []
    for name, text in PROMPTS.items():
        ids = [2, *tok.encode(text)]
        speeds = {"full": [], "pruned": []}
        outputs = {}
        before = (head.stats.positions, head.stats.exact_rows)
        for rep in range(reps + 1):
            for kind in ("full", "pruned"):
                engine.target.output_head = head if kind == "pruned" else None
                result = engine.generate(ids, n_predict=n, sampling=greedy, spec=SpecOptions(type="none"))
                outputs.setdefault(kind, result.token_ids)
                if rep:
                    speeds[kind].append(result.timings.decode_tokens_per_s)
        positions = head.stats.positions - before[0]
        full, pruned = median(speeds["full"]), median(speeds["pruned"])
        rows.append(
            {
                "prompt": name,
                "full tok/s": full,
                "pruned tok/s": pruned,
                "speedup": pruned / full,
                "exact rows/pos": (head.stats.exact_rows - before[1]) / max(1, positions),
                "tokens": "same" if outputs["full"] == outputs["pruned"] else "DIFFER",
            }
        )
    engine.target.output_head = head
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="timed forwards per width and head")
    parser.add_argument("--decode-reps", type=int, default=3, help="timed generations per prompt and head")
    parser.add_argument("-n", type=int, default=64, help="tokens per generation")
    parser.add_argument("--widths", default="1,2,4", help="positions per forward")
    parser.add_argument("--dense", default=str(head_build.DENSE), help="inputs multiplied exactly, e.g. 8,16")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "head.jsonl"))
    args = parser.parse_args()
    engine = gemma_mtp.load(str(gemma3_270m_gguf()), head="full", threads=args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    meta = {
        "commit": git_commit(),
        "dirty": git_dirty(),
        "time": timestamp(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
    }
    print("command:", " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"load average at start: {meta['load_avg']:.2f}; threads {meta['threads']}; {meta['cpu']}")
    out_rows = []
    for dense in (int(s) for s in args.dense.split(",")):
        head_build.DENSE = dense
        notice = head_build.install_output_head(engine.target, "pruned")
        head = engine.target.output_head
        print(f"\nscheme: {dense} dense inputs ({notice})")
        fwd = forward_cost(engine, head, widths, args.reps)
        cols = ["T", "full step ms", "pruned step ms", "step ratio", "full head ms", "pruned head ms"]
        print(format_table(fwd, [*cols, "exact rows/pos", "full fallbacks"]))
        dec = decode_speed(engine, head, args.n, args.decode_reps)
        cols = ["prompt", "full tok/s", "pruned tok/s", "speedup", "exact rows/pos", "tokens"]
        print(format_table(dec, cols))
        out_rows += [{**meta, "bench": "forward", "dense": dense, **r} for r in fwd]
        out_rows += [{**meta, "bench": "decode", "dense": dense, "n": args.n, **r} for r in dec]
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    append_jsonl(args.out, out_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
