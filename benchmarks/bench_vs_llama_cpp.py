"""Ours vs llama.cpp on the same GGUF, same prompt, greedy decoding, in one run.

    python benchmarks/bench_vs_llama_cpp.py --llama-python /tmp/llamavenv/bin/python \
        [--model FILE.gguf] [-n 128] [--reps 3] [--threads 2] [--dtype bfloat16] [--spec-type ngram]

llama.cpp runs through llama-cpp-python (`pip install llama-cpp-python==0.3.36` builds it from
source, ~15 min on 2 cores) in the interpreter given by --llama-python, in a subprocess, so it never
shares a process with torch. The model defaults to the Gemma 3 270M Q4_K_M GGUF (gemma_mtp.assets).
Reports decode tokens/s (first token excluded) for each engine and the ratio ours / llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, timestamp

PROMPT = "def fibonacci(n):\n    "

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, prompt, n, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
rates = []
for _ in range(reps + 1):
    llm.reset()
    stamps = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        stamps.append(time.perf_counter())
        if len(stamps) >= n:
            break
    rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
print(json.dumps({"rates": rates[1:]}))
"""


def llama_cpp_rates(python: str, model: str, n: int, reps: int, threads: int) -> list[float]:
    out = subprocess.run(
        [python, "-c", LLAMA_SCRIPT, model, PROMPT, str(n), str(reps), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["rates"]


def our_rates(model: str, n: int, reps: int, dtype: str, spec_type: str) -> list[float]:
    import gemma_mtp
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions
    from gemma_mtp.tokenizer import load_tokenizer

    engine = gemma_mtp.load(model, dtype=dtype, device="cpu", ctx_size=1024)
    ids = load_tokenizer(model).encode(PROMPT)
    greedy = SamplingParams(temperature=0)
    rates = []
    for _ in range(reps + 1):
        stamps = []
        for _step in engine.stream(ids, n_predict=n, sampling=greedy, spec=SpecOptions(type=spec_type)):
            stamps.append((time.perf_counter(), len(_step.token_ids)))
        tokens = sum(k for _, k in stamps[1:])
        rates.append(tokens / (stamps[-1][0] - stamps[0][0]))
    return rates[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="a python with llama_cpp installed")
    ap.add_argument("--model")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--spec-type", default="none")
    ap.add_argument("--out", default=str(RESULTS / "vs_llama_cpp.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from gemma_mtp.assets import gemma3_270m_gguf

        args.model = str(gemma3_270m_gguf())
    theirs = median(llama_cpp_rates(args.llama_python, args.model, args.n, args.reps, args.threads))
    ours = median(our_rates(args.model, args.n, args.reps, args.dtype, args.spec_type))
    common = {
        "model": args.model,
        "cpu": cpu_name(),
        "threads": args.threads,
        "n": args.n,
        "reps": args.reps,
        "commit": git_commit(),
        "timestamp": timestamp(),
    }
    rows = [
        {
            **common,
            "engine": "llama.cpp",
            "dtype": "gguf",
            "spec": "none",
            "tokens_per_s": theirs,
            "ratio": 1.0,
        },
        {
            **common,
            "engine": "gemma-mtp",
            "dtype": args.dtype,
            "spec": args.spec_type,
            "tokens_per_s": ours,
            "ratio": ours / theirs,
        },
    ]
    append_jsonl(args.out, rows)
    print(format_table(rows, ["engine", "dtype", "spec", "tokens_per_s", "ratio"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
