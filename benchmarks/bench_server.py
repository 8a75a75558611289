"""Aggregate throughput of `gemma-mtp serve` with 1, 4 and 8 concurrent streams, speculation on vs
off, in one run against one server.

    python benchmarks/bench_server.py --url http://127.0.0.1:8080 [--api-key KEY]   # a running server
    python benchmarks/bench_server.py -m TARGET [-md DRAFT] [--spec-type mtp]       # starts one
    python benchmarks/bench_server.py --gemma3      # the embedded Gemma 3 270M GGUF, n-gram drafting
    python benchmarks/bench_server.py --synthetic   # tiny random Gemma 4 target + MTP assistant

A started server gets `-np` = the largest concurrency and runs in its own process (so the load
generator does not share its interpreter). Each configuration sends C streaming `/v1/completions`
requests at once (greedy, `ignore_eos`, exactly `-n` tokens each, a different prompt per stream);
speculation is switched per request with the `speculative` body field, so "on" and "off" run on
the same server, interleaved rep by rep. Reported per (concurrency, speculation): aggregate
tokens/s (all completion tokens / wall time from the first request to the last [DONE], median of
reps), median per-stream decode rate and time to first token, draft acceptance, the on/off
speedup, and `lossless` (on and off produced the same text for every prompt). Rows go to JSONL.
`--synthetic` uses random weights: drafts are almost never accepted, so it measures the cost of
speculating in a batch, not its benefit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import (
    REPO,
    RESULTS,
    append_jsonl,
    cpu_name,
    format_table,
    git_commit,
    git_dirty,
    median,
    timestamp,
)

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import json\n\n\ndef load_users(path):\n    with open(path) as f:\n        return json.load(f)\n\n\n"
    "def load_orders(path):\n",
    "The three primary colors are red, yellow and blue. The three secondary colors are",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01' ORDER BY",
    "for i in range(10):\n    for j in range(10):\n        if i == j:\n",
    "Q: What is the capital of France?\nA: Paris.\nQ: What is the capital of Italy?\nA:",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, parallel: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "gemma_mtp.server", "-m", str(args.model), "--port", str(port)]
    cmd += ["-np", str(parallel), "-c", str(args.ctx), "--dtype", args.dtype, "--device", args.device]
    cmd += ["-t", str(args.threads), "--spec-draft-n-max", str(args.n_max)]
    if args.model_draft:
        cmd += ["-md", str(args.model_draft)]
    if args.spec_type:
        cmd += ["--spec-type", args.spec_type]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("the server did not become ready in 600 s")
        time.sleep(0.2)


async def one_stream(http: httpx.AsyncClient, prompt: str, n: int, speculative: dict) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "speculative": speculative,
    }
    t0 = time.perf_counter()
    first, text, final = None, "", {}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise SystemExit(f"stream error: {chunk['error']}")
            for choice in chunk["choices"]:
                if first is None:
                    first = time.perf_counter()
                text += choice.get("text", "")
            final = chunk.get("timings", final)
    return {"text": text, "ttft_ms": ((first or t0) - t0) * 1e3, "timings": final}


async def run_config(
    url: str, headers: dict, prompts: list[str], n: int, concurrency: int, speculative: dict
):
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=None) as http:
        t0 = time.perf_counter()
        streams = await asyncio.gather(
            *(one_stream(http, prompts[i % len(prompts)], n, speculative) for i in range(concurrency))
        )
        return time.perf_counter() - t0, streams


def summarize(wall: list[float], runs: list[list[dict]]) -> dict:
    tokens = [sum(s["timings"].get("predicted_n", 0) for s in streams) for streams in runs]
    drafted = sum(s["timings"].get("draft_n", 0) for streams in runs for s in streams)
    accepted = sum(s["timings"].get("draft_n_accepted", 0) for streams in runs for s in streams)
    return {
        "aggregate_tokens_per_s": median([t / w for t, w in zip(tokens, wall, strict=True)]),
        "stream_tokens_per_s": median(
            [s["timings"].get("predicted_per_second", 0.0) for r in runs for s in r]
        ),
        "ttft_ms": median([s["ttft_ms"] for r in runs for s in r]),
        "acceptance": accepted / drafted if drafted else None,
        "draft_tokens": drafted,
        "texts": [s["text"] for s in runs[0]],
    }


def synthetic_model(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import server_model  # the test suite's tokenizer/template writer (needs the dev extra)
    from bench_speculative import synthetic_pair

    target, assistant = synthetic_pair(root)
    server_model.write_tokenizer(target, vocab_size=4096)
    return target, assistant


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running server (give it -np >= the largest concurrency)")
    source.add_argument("-m", "--model", help="start a server on this model")
    source.add_argument("--gemma3", action="store_true", help="start one on the embedded Gemma 3 270M")
    source.add_argument("--synthetic", action="store_true", help="start one on a tiny random Gemma 4 pair")
    ap.add_argument("-md", "--model-draft")
    ap.add_argument(
        "--spec-type", help="server default speculation (default: mtp with -md, ngram for --gemma3)"
    )
    ap.add_argument("--n-max", type=int, default=3, help="draft length (default: %(default)s)")
    ap.add_argument("--api-key", default=os.environ.get("GEMMA_MTP_API_KEY"))
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("-n", type=int, default=64, help="tokens per stream")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", help="JSONL file of prompt strings (default: 8 built-in)")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "server.jsonl"))
    args = ap.parse_args()

    levels = [int(c) for c in args.concurrency.split(",") if c]
    prompts = (
        [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if args.prompts
        else PROMPTS
    )
    tmp = proc = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        args.model, args.model_draft = synthetic_model(Path(tmp.name))
    elif args.gemma3:
        from gemma_mtp.assets import gemma3_270m_gguf

        args.model, args.spec_type = gemma3_270m_gguf(), args.spec_type or "ngram"
    if args.url is None and args.model is None:
        ap.error("give --url, -m MODEL, --gemma3 or --synthetic")
    # the server runs from the repository root: pass it absolute paths
    args.model = Path(args.model).resolve() if args.model else None
    args.model_draft = Path(args.model_draft).resolve() if args.model_draft else None
    try:
        if args.url is None:
            proc, args.url = start_server(args, max(levels))
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        rows = measure(args, headers, prompts, levels)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if tmp is not None:
            tmp.cleanup()
    append_jsonl(args.out, rows)
    cols = [
        "concurrency",
        "speculative",
        "aggregate_tokens_per_s",
        "speedup",
        "stream_tokens_per_s",
        "ttft_ms",
    ]
    print(format_table(rows, [*cols, "acceptance", "lossless"]))
    return 0 if all(r.get("lossless", True) for r in rows) else 1


def measure(args, headers: dict, prompts: list[str], levels: list[int]) -> list[dict]:
    models = httpx.get(f"{args.url}/v1/models", headers=headers).json()["data"][0]
    common = {
        "model": str(args.model or models["id"]),
        "draft": str(args.model_draft),
        "server": models.get("meta", {}),
        "dtype": args.dtype,
        "device": args.device,
        "cpu": cpu_name(),
        "threads": args.threads,
        "n_predict": args.n,
        "n_max": args.n_max,
        "reps": args.reps,
        "commit": git_commit(),
        "dirty": git_dirty(),
        "timestamp": timestamp(),
    }
    settings = {"off": {"enabled": False}, "on": {"enabled": True, "n_max": args.n_max}}
    asyncio.run(run_config(args.url, headers, prompts, 8, 1, settings["off"]))  # warm-up
    rows = []
    for concurrency in levels:
        walls = {name: [] for name in settings}
        runs = {name: [] for name in settings}
        for _ in range(args.reps):
            for name, speculative in settings.items():  # interleaved: load changes hit both alike
                wall, streams = asyncio.run(
                    run_config(args.url, headers, prompts, args.n, concurrency, speculative)
                )
                walls[name].append(wall)
                runs[name].append(streams)
        summary = {name: summarize(walls[name], runs[name]) for name in settings}
        for name in settings:
            s = summary[name]
            rows.append(
                {
                    **common,
                    "concurrency": concurrency,
                    "speculative": name,
                    **{k: v for k, v in s.items() if k != "texts"},
                    "speedup": s["aggregate_tokens_per_s"] / summary["off"]["aggregate_tokens_per_s"],
                    "lossless": s["texts"] == summary["off"]["texts"],
                }
            )
        print(f"concurrency {concurrency}: done", file=sys.stderr)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
