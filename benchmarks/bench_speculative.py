"""Speculative vs plain decoding of the same target, in one run: tokens/s, speedup, acceptance.

    python benchmarks/bench_speculative.py -m TARGET_DIR [-md DRAFT_DIR] \
        --kinds none,ngram,mtp,draft --n-max 1,2,3,4 --prompts prompts.jsonl -n 64 --reps 3

`--prompts` is a JSONL file of token-id lists (no tokenizer needed); without it a few built-in
id sequences are used (a repetitive one, for the n-gram drafter, and random ones). `--synthetic`
builds a tiny random Gemma 4 target and assistant with transformers instead of -m/-md: random
weights accept almost nothing, so that mode measures the cost of drafting, not its benefit.
Greedy decoding throughout; every speculative row is checked token-for-token against plain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, timestamp

import gemma_mtp
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

GREEDY = SamplingParams(temperature=0)


def builtin_prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    loop = [2] + [5, 9, 13, 7, 5, 9, 13, 11] * 4
    return [loop] + [[2] + torch.randint(3, vocab, (24,), generator=gen).tolist() for _ in range(2)]


def synthetic_pair(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import hf_reference as ref  # the test suite's tiny-model builders (needs the dev extra)

    text = ref.gemma4_text_kwargs(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=1024,
        layer_types=[ref.S, ref.S, ref.F, ref.S, ref.S, ref.F],
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=4096,
    )
    target = ref._gemma4(root / "target", 0, text, False)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target.path, assistant.path


def measure(engine, prompts, n: int, spec: SpecOptions, reps: int) -> dict:
    rates, outputs, stats = [], [], []
    for _ in range(reps):
        tokens = 0
        decode_s = 0.0
        outputs = []
        for prompt in prompts:
            t0 = time.perf_counter()
            result = engine.generate(prompt, n_predict=n, sampling=GREEDY, spec=spec)
            decode_s += time.perf_counter() - t0 - result.timings.prompt_ms / 1e3
            tokens += result.timings.decode_tokens  # after the first round (its time is prompt_ms)
            outputs.append(result.token_ids)
            if result.speculative:
                stats.append(result.speculative)
        rates.append(tokens / decode_s)
    drafted = sum(s["drafted"] for s in stats)
    accepted = sum(s["accepted"] for s in stats)
    rounds = sum(s["rounds"] for s in stats)
    return {
        "tokens_per_s": median(rates),
        "acceptance": accepted / drafted if drafted else None,
        "mean_accepted_length": 1 + accepted / rounds if rounds else None,
        "outputs": outputs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model")
    ap.add_argument("-md", "--model-draft")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--kinds", default="none,ngram,mtp")
    ap.add_argument("--n-max", default="1,2,3,4")
    ap.add_argument("--prompts")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "speculative.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        args.model, args.model_draft = synthetic_pair(Path(tmp.name))
    if args.model is None:
        ap.error("give -m TARGET (and -md DRAFT) or --synthetic")
    engine = gemma_mtp.load(args.model, args.model_draft, dtype=args.dtype, device=args.device, ctx_size=1024)
    prompts = (
        [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if args.prompts
        else builtin_prompts(engine.config.vocab_size)
    )
    kinds = [k for k in args.kinds.split(",") if k]
    n_values = [int(x) for x in args.n_max.split(",")]
    engine.generate(prompts[0], n_predict=8, sampling=GREEDY, spec=SpecOptions())  # warm-up

    base = measure(engine, prompts, args.n, SpecOptions(), args.reps)
    rows = []
    common = {
        "model": str(args.model),
        "draft": str(args.model_draft),
        "dtype": args.dtype,
        "device": args.device,
        "cpu": cpu_name(),
        "threads": args.threads,
        "n_predict": args.n,
        "reps": args.reps,
        "commit": git_commit(),
        "timestamp": timestamp(),
        "torch": torch.__version__,
    }
    rows.append({**common, "kind": "none", "n_max": 0, "tokens_per_s": base["tokens_per_s"], "speedup": 1.0})
    for kind in kinds:
        if kind == "none":
            continue
        for n_max in n_values:
            r = measure(engine, prompts, args.n, SpecOptions(type=kind, n_max=n_max), args.reps)
            rows.append(
                {
                    **common,
                    "kind": kind,
                    "n_max": n_max,
                    "tokens_per_s": r["tokens_per_s"],
                    "speedup": r["tokens_per_s"] / base["tokens_per_s"],
                    "acceptance": r["acceptance"],
                    "mean_accepted_length": r["mean_accepted_length"],
                    "lossless": r["outputs"] == base["outputs"],
                }
            )
    append_jsonl(args.out, rows)
    cols = ["kind", "n_max", "tokens_per_s", "speedup", "acceptance", "mean_accepted_length", "lossless"]
    print(format_table(rows, cols))
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r.get("lossless", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
