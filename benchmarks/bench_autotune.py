"""Draft-length autotune vs every fixed draft length, on the same prompts, in one run.

    python benchmarks/bench_autotune.py [-m TARGET] [-md DRAFTER] [--spec-type ngram|mtp|draft] \
        --n-max 1,2,3,4 --prompts builtin --categories code,json -n 64 --reps 2 --temp 0

Without -m it runs the embedded Gemma 3 270M GGUF with n-gram (prompt-lookup) drafting, the pair
that gives the most acceptance on this project's machines (`-md` with the demo drafter and `--spec-type mtp` runs MTP). It uses
the bench harness (`gemma_mtp.bench.runner`): plain decoding, each fixed n and autotune run rep by
rep, interleaved, with the same seeds; autotune starts cold in every rep and learns across that
rep's prompts. The issue's target: autotune within 5% of the best fixed choice (plain decoding
counts: n = 0 is one of autotune's options) and better than n = 3 where 3 is not the best.
Rows go to benchmarks/results/autotune.jsonl; the table and the verdict go to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from _common import RESULTS, append_jsonl, format_table

from gemma_mtp.bench.cli import parse_int_list
from gemma_mtp.bench.prompts import load_prompts
from gemma_mtp.bench.runner import BenchConfig, run_bench
from gemma_mtp.engine.options import LoadOptions


def _prompt_file(source: str, categories: list[str], directory: Path) -> str:
    prompts = [p for p in load_prompts(source) if not categories or p.category in categories]
    if not prompts:
        raise SystemExit(f"no prompts in {source} for categories {categories}")
    path = directory / "prompts.jsonl"
    lines = [
        json.dumps({"category": p.category, "prompt": p.prompt if p.is_text else list(p.prompt)})
        for p in prompts
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def verdict(rows: list[dict]) -> dict:
    """Autotune against the best fixed choice (plain included) and against n = 3."""
    overall = {r["n_max"]: r for r in rows if r["category"] == "all"}
    fixed = {n: r["tokens_per_s"] for n, r in overall.items() if n != "auto"}
    best = max(fixed, key=fixed.get)
    auto = overall["auto"]["tokens_per_s"]
    out = {
        "best_fixed_n": best,
        "best_fixed_tokens_per_s": fixed[best],
        "autotune_tokens_per_s": auto,
        "autotune_vs_best": auto / fixed[best],
        "within_5pct_of_best": auto >= 0.95 * fixed[best],
    }
    if 3 in fixed:
        out["autotune_vs_n3"] = auto / fixed[3]
        out["beats_n3_where_3_not_best"] = None if best == 3 else auto > fixed[3]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", help="target (default: the Gemma 3 270M GGUF)")
    ap.add_argument("-md", "--model-draft", dest="drafts", action="append", default=[])
    ap.add_argument("--spec-type", default=None)
    ap.add_argument("--n-max", type=parse_int_list, default=(1, 2, 3, 4))
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--categories", default="code,json", help="comma list; empty for all")
    ap.add_argument("-n", "--n-predict", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "autotune.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from gemma_mtp.assets import gemma3_270m_gguf

        args.model = str(gemma3_270m_gguf())

    with tempfile.TemporaryDirectory() as tmp:
        config = BenchConfig(
            load=LoadOptions(model=args.model, dtype=args.dtype, device=args.device),
            drafts=tuple(args.drafts),
            spec_type=args.spec_type,
            n_max=args.n_max,
            autotune=True,
            reps=args.reps,
            prompts=_prompt_file(args.prompts, [c for c in args.categories.split(",") if c], Path(tmp)),
            n_predict=args.n_predict,
            temperature=args.temp,
        )
        rows = run_bench(
            config, progress=lambda m: print(f"[bench_autotune] {m}", file=sys.stderr, flush=True)
        )

    result = verdict(rows)
    for row in rows:
        row["benchmark"] = "autotune"
        row["threads"] = args.threads
        if row["category"] == "all":
            row["verdict"] = result
    append_jsonl(args.out, rows)
    table = []
    for r in rows:
        chosen = r.get("autotune_chosen")
        table.append(
            {
                "category": r["category"],
                "n_max": "plain" if r["n_max"] == 0 else r["n_max"],
                "tok/s": r["tokens_per_s"],
                "±": r["tokens_per_s_std"],
                "speedup": r.get("speedup"),
                "acceptance": r.get("acceptance"),
                "accepted_len": r.get("mean_accepted_length"),
                "lossless": r.get("lossless"),
                "autotune chose (n=0..)": ",".join(map(str, chosen)) if chosen else None,
            }
        )
    print(format_table(table, list(table[0])))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
