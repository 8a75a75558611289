"""Ours vs llama.cpp on the same GGUF, same prompt, greedy decoding, in one run.

    python benchmarks/bench_vs_llama_cpp.py --llama-python /tmp/llamavenv/bin/python \
        [--model FILE.gguf] [-n 128] [--reps 3] [--threads 2] [--dtype bfloat16]
        [--spec-type ngram|mtp [-md DRAFT.gguf] [--n-max 3] [--p-min 0.6]]

llama.cpp runs through llama-cpp-python (`pip install llama-cpp-python==0.3.36` builds it from
source, ~15 min on 2 cores) in the interpreter given by --llama-python, in a subprocess, so it never
shares a process with torch. The model defaults to the Gemma 3 270M Q4_K_M GGUF (gemma_mtp.assets).
Reports decode tokens/s (first token excluded) for each engine and the ratio ours / llama.cpp,
and each process's peak RSS (`VmHWM`) with its baseline before the model loads (Python + torch
for ours, Python + llama_cpp for theirs). The engines alternate rep by rep (llama.cpp in a fresh
subprocess each rep), so a change in machine load hits both alike. With `--spec-type`, our
speculative decoding (the drafter from `-md`, or the demo drafter for the default model) runs in
the same alternation as a third row, beside our plain decoding. `--prompts held-out` runs the 8
held-out prompts of `bench_demo_pair.py` in every rep instead of one code prompt (rates are per
prompt and rep; the table gives their median).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, status_mb, timestamp
from bench_demo_pair import PROMPTS as HELD_OUT

PROMPT = "def fibonacci(n):\n    "

LLAMA_SCRIPT = r"""
import json, sys, time
def hwm(key="VmHWM"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
from llama_cpp import Llama
base = hwm()
path, prompts, n, reps, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
rates = []
for rep in range(reps + 1):  # the first pass over the first prompt warms up
    for prompt in prompts[:1] if rep == 0 else prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        stamps = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            stamps.append(time.perf_counter())
            if len(stamps) >= n:
                break
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
print(json.dumps({"rates": rates[1:], "peak_rss_mb": hwm(), "base_rss_mb": base, "rss_mb": hwm("VmRSS")}))
"""


def llama_cpp_rates(python: str, model: str, prompts: list[str], n: int, reps: int, threads: int) -> dict:
    out = subprocess.run(
        [python, "-c", LLAMA_SCRIPT, model, json.dumps(prompts), str(n), str(reps), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class Ours:
    """Our engine, loaded once; `rates(reps)` runs greedy generations like the llama.cpp script."""

    def __init__(self, model: str, dtype: str, prompts: list[str], draft: str | None = None) -> None:
        import gemma_mtp
        from gemma_mtp.tokenizer import load_tokenizer

        self.base_rss_mb = status_mb("VmHWM")
        self.engine = gemma_mtp.load(model, draft, dtype=dtype, device="cpu", ctx_size=1024)
        tokenizer = load_tokenizer(model)
        self.prompts = [tokenizer.encode(p) for p in prompts]
        self.rates(1)  # warm-up

    def rates(self, reps: int, spec_type: str = "none", n_max: int = 3, p_min: float = 0.0) -> list[float]:
        from gemma_mtp.sampling import SamplingParams
        from gemma_mtp.speculative.base import SpecOptions

        greedy, out = SamplingParams(temperature=0), []
        spec = SpecOptions(type=spec_type, n_max=n_max, p_min=p_min) if spec_type != "none" else SpecOptions()
        for _ in range(reps):
            for ids in self.prompts:
                stamps = []
                for step in self.engine.stream(ids, n_predict=self.n, sampling=greedy, spec=spec):
                    stamps.append((time.perf_counter(), len(step.token_ids)))
                tokens = sum(k for _, k in stamps[1:])
                out.append(tokens / (stamps[-1][0] - stamps[0][0]))
        return out

    n = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="a python with llama_cpp installed")
    ap.add_argument("--model")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--spec-type", default="none")
    ap.add_argument("-md", "--model-draft", default=None, help="drafter for --spec-type mtp/draft")
    ap.add_argument("--n-max", type=int, default=3)
    ap.add_argument("--p-min", type=float, default=0.0)
    ap.add_argument(
        "--prompts",
        choices=["fibonacci", "held-out"],
        default="fibonacci",
        help="one code prompt, or bench_demo_pair.py's 8 held-out prompts (a rate per prompt and rep)",
    )
    ap.add_argument("--out", default=str(RESULTS / "vs_llama_cpp.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from gemma_mtp.assets import gemma3_270m_gguf

        args.model = str(gemma3_270m_gguf())
        if args.spec_type in ("mtp", "draft") and args.model_draft is None:
            from gemma_mtp.demo import demo_drafter

            args.model_draft = str(demo_drafter())
    prompts = [PROMPT] if args.prompts == "fibonacci" else HELD_OUT
    ours_engine = Ours(
        args.model, args.dtype, prompts, args.model_draft if args.spec_type in ("mtp", "draft") else None
    )
    ours_engine.n = args.n
    theirs_rates, ours_rates, spec_rates, theirs_rss, theirs_base, theirs_now = [], [], [], 0.0, 0.0, 0.0
    for _ in range(args.reps):  # alternate, so that load changes hit both engines alike
        got = llama_cpp_rates(args.llama_python, args.model, prompts, args.n, 1, args.threads)
        theirs_rates += got["rates"]
        theirs_rss, theirs_base = max(theirs_rss, got["peak_rss_mb"]), got["base_rss_mb"]
        theirs_now = got["rss_mb"]
        ours_rates += ours_engine.rates(1)
        if args.spec_type != "none":
            spec_rates += ours_engine.rates(1, args.spec_type, args.n_max, args.p_min)
    theirs, ours = median(theirs_rates), median(ours_rates)
    ours_rss, ours_now = status_mb("VmHWM"), status_mb("VmRSS")
    common = {
        "model": args.model,
        "cpu": cpu_name(),
        "threads": args.threads,
        "n": args.n,
        "reps": args.reps,
        "prompts": args.prompts,
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
            "rates": [round(r, 1) for r in theirs_rates],
            "peak_rss_mb": round(theirs_rss),
            "rss_mb": round(theirs_now),
            "base_rss_mb": round(theirs_base),
        },
        {
            **common,
            "engine": "gemma-mtp",
            "dtype": args.dtype,
            "spec": "none",
            "tokens_per_s": ours,
            "ratio": ours / theirs,
            "rates": [round(r, 1) for r in ours_rates],
            "peak_rss_mb": round(ours_rss),
            "rss_mb": round(ours_now),
            "base_rss_mb": round(ours_engine.base_rss_mb),
        },
    ]
    if spec_rates:
        spec = f"{args.spec_type} n={args.n_max}" + (f" p_min={args.p_min}" if args.p_min else "")
        rows.append(
            {
                **rows[-1],
                "spec": spec,
                "draft": args.model_draft,
                "tokens_per_s": median(spec_rates),
                "ratio": median(spec_rates) / theirs,
                "rates": [round(r, 1) for r in spec_rates],
            }
        )
    append_jsonl(args.out, rows)
    print(
        format_table(
            rows,
            [
                "engine",
                "dtype",
                "spec",
                "tokens_per_s",
                "ratio",
                "rates",
                "peak_rss_mb",
                "rss_mb",
                "base_rss_mb",
            ],
        )
    )
    print(f"file {Path(args.model).stat().st_size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
