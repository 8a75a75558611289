"""The demo pair (Gemma 3 270M Q4_K_M + the drafter trained for it): plain vs MTP speculative, one run.

    python benchmarks/bench_demo_pair.py [--n-max 1,2,3,4] [--p-min 0,0.5] [-n 64] [--reps 3] [--threads 2]

Greedy, on held-out built-in prompts (none of them is in assets/corpus/, the training corpus).
Reports tokens/s, speedup over plain decoding of the same target in the same run (configurations
run interleaved prompt by prompt, so load changes on a shared machine hit them alike; also the
median of per-prompt paired speedups), acceptance by draft position (share of rounds whose first i
drafts were accepted), mean accepted length (1 + accepted / rounds with a draft, the llama.cpp and
vLLM convention), tokens per target forward (every decode forward, drafted or not), and checks every speculative
output against plain greedy token for token. `--p-min` adds a confidence threshold
(`--spec-draft-p-min`: drafting stops at the first draft the drafter gives less than that
probability, so an unconfident round costs a plain step plus one draft step); every n_max runs with
every p_min. Rows go to benchmarks/results/demo_pair.jsonl.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import (
    RESULTS,
    append_jsonl,
    cpu_name,
    format_table,
    git_commit,
    git_dirty,
    median,
    timestamp,
)

import gemma_mtp
from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.demo import demo_drafter
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer

GREEDY = SamplingParams(temperature=0)

# Held out: written for this benchmark, not taken from the training corpus.
PROMPTS = [
    'import json\n\n\ndef load_users(path):\n    """Read the users file and return a list of dicts."""\n'
    "    with open(path) as f:\n        return json.load(f)\n\n\ndef load_orders(path):\n"
    '    """Read the orders file and return a list of dicts."""\n',
    "The history of the bicycle begins in the early nineteenth century, when",
    "Here is a simple recipe for pancakes. You will need:",
    "def count_vowels(text):\n",
    "Q: What is the boiling point of water at sea level?\nA:",
    "The three most important things to remember when learning to swim are",
    "<ul>\n  <li>Home</li>\n  <li>About</li>\n",
    "Dear team,\n\nI am happy to announce that",
]


def run_all(engine, prompts: list[list[int]], n: int, specs: list[SpecOptions], reps: int) -> list[dict]:
    """Every configuration on every prompt, interleaved (prompt by prompt), so that a change in
    machine load hits all of them alike; per configuration: tokens/s, paired speedups, acceptance."""
    per = [
        {"tokens": 0, "seconds": 0.0, "rates": [], "stats": [], "outputs": [], "decoded": 0} for _ in specs
    ]
    for rep in range(reps):
        for ids in prompts:
            for acc, spec in zip(per, specs, strict=True):
                result = engine.generate(ids, n_predict=n, sampling=GREEDY, spec=spec)
                tokens = result.timings.decode_tokens  # after the first round (its time is prompt_ms)
                acc["tokens"] += tokens
                acc["seconds"] += result.timings.decode_ms / 1e3
                acc["rates"].append(tokens / max(result.timings.decode_ms / 1e3, 1e-9))
                if rep == 0:
                    acc["decoded"] += tokens
                    acc["outputs"].append(result.token_ids)
                    if result.speculative:
                        acc["stats"].append(result.speculative)
    rows = []
    for acc, spec in zip(per, specs, strict=True):
        ratios = [r / b for r, b in zip(acc["rates"], per[0]["rates"], strict=True)]
        row: dict = {
            "tokens_per_s": acc["tokens"] / acc["seconds"],
            "speedup": (acc["tokens"] / acc["seconds"]) / (per[0]["tokens"] / per[0]["seconds"]),
            "speedup_median_paired": median(ratios),
            "lossless": acc["outputs"] == per[0]["outputs"],
        }
        stats = acc["stats"]
        if stats:
            drafted = sum(s["drafted"] for s in stats)
            accepted = sum(s["accepted"] for s in stats)
            rounds = sum(s["rounds"] for s in stats)
            by_pos = [  # a round that stopped drafting early (p_min) records fewer positions
                sum(s["accepted_by_position"][i] for s in stats if i < len(s["accepted_by_position"]))
                for i in range(spec.n_max)
            ]
            row.update(
                acceptance=accepted / drafted if drafted else None,
                mean_accepted_length=1 + accepted / rounds if rounds else None,
                # over every verify pass, those that carried no draft (p_min) included
                tokens_per_forward=acc["decoded"] / max(acc["decoded"] - accepted, 1),
                accepted_by_position=[a / rounds for a in by_pos] if rounds else None,
                draft_ms_per_round=sum(s.get("draft_ms", 0.0) for s in stats) / max(rounds, 1),
                verify_ms_per_round=sum(s.get("verify_ms", 0.0) for s in stats) / max(rounds, 1),
            )
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-md", "--model-draft", default=None, help="default: the committed demo drafter")
    ap.add_argument("--n-max", default="1,2,3,4")
    ap.add_argument("--p-min", default="0", help="draft confidence thresholds, e.g. 0,0.3,0.6")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "demo_pair.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = gemma3_270m_gguf()
    t0 = time.perf_counter()
    drafter = args.model_draft or str(demo_drafter())
    engine = gemma_mtp.load(target, drafter, dtype=args.dtype, device="cpu", ctx_size=1024)
    load_s = time.perf_counter() - t0
    tok = load_tokenizer(target)
    prompts = [tok.encode(p) for p in PROMPTS]
    engine.generate(prompts[0][:8], n_predict=4, sampling=GREEDY, spec=SpecOptions())  # warm-up
    engine.generate(prompts[0][:8], n_predict=4, sampling=GREEDY, spec=SpecOptions(type="mtp", n_max=2))

    common = {
        "target": target.name,
        "draft": Path(drafter).name,
        "dtype": args.dtype,
        "device": "cpu",
        "cpu": cpu_name(),
        "threads": args.threads,
        "n_predict": args.n,
        "prompts": len(prompts),
        "reps": args.reps,
        "load_s": round(load_s, 1),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "timestamp": timestamp(),
        "torch": torch.__version__,
    }
    p_mins = [float(p) for p in args.p_min.split(",") if p]
    specs = [SpecOptions()] + [
        SpecOptions(type="mtp", n_max=int(x), p_min=p) for x in args.n_max.split(",") if x for p in p_mins
    ]
    results = run_all(engine, prompts, args.n, specs, args.reps)
    rows = [
        {
            **common,
            "kind": spec.type,
            "n_max": spec.n_max if spec.type != "none" else 0,
            "p_min": spec.p_min,
            **result,
        }
        for spec, result in zip(specs, results, strict=True)
    ]
    append_jsonl(args.out, rows)
    for row in rows:
        if row.get("accepted_by_position"):
            row["by_position"] = "/".join(f"{a:.2f}" for a in row["accepted_by_position"])
    cols = [
        "kind",
        "n_max",
        "p_min",
        "tokens_per_s",
        "speedup",
        "speedup_median_paired",
        "acceptance",
        "by_position",
        "mean_accepted_length",
        "tokens_per_forward",
        "draft_ms_per_round",
        "verify_ms_per_round",
        "lossless",
    ]
    print(format_table(rows, cols))
    return 0 if all(r.get("lossless", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
