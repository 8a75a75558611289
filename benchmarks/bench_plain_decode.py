"""Plain greedy decode, our engine vs transformers: decode tokens/s and peak RSS, taken in one run.

    .venv/bin/python benchmarks/bench_plain_decode.py --n 64 --reps 3 --configs tiny,small \
        --dtypes float32,bfloat16

The parent builds each random Gemma 4 checkpoint once with transformers (`save_pretrained` into a
temp dir), then loads each (config, dtype, engine) in its own spawned Python process, so that each
peak RSS (read in the child: VmHWM, see `_peak_rss_mb`) is that engine's alone. The two
children of a (config, dtype) stay up side by side and take turns: timed runs alternate ours,
transformers, ours, ... so that load from other processes on the machine hits both alike.

Timing method (the same for both engines): a callback stamps the clock each time a generated token
becomes visible — our `Engine.stream` yielding a step, transformers' `generate(streamer=...)` calling
`put` (its first `put` is the prompt, not a token). Token 1 comes out of the prefill; the decode time
is stamp[N] - stamp[1] over the N - 1 tokens after it, i.e. one forward + greedy pick per token.
EOS is disabled on both sides so every run is exactly N tokens. Each worker does one warm-up
generation, then `--reps` timed ones; the table reports the median over reps. `base_rss_mb` in the
rows is the child's peak right after importing its library (torch included), before loading weights.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import random
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from _common import (
    RESULTS,
    append_jsonl,
    cpu_name,
    format_table,
    git_commit,
    git_dirty,
    median,
    status_mb,
    timestamp,
)

S, F = "sliding_attention", "full_attention"
ENGINES = ("ours", "transformers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# transformers Gemma4TextConfig kwargs. "small" is Gemma 4 E2B's shape scaled down: 4 sliding : 1
# full layers, the second half of the stack reading earlier layers' KV, per-layer embeddings (PLE),
# double-wide MLP on KV-shared layers, a larger head dim on full layers, one KV head.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        layer_types=[S, S, S, F],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        sliding_window=32,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        final_logit_softcapping=30.0,
    ),
    "small": dict(
        vocab_size=32768,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=8,
        layer_types=[S, S, S, F, S, S, S, F],
        num_kv_shared_layers=4,
        use_double_wide_mlp=True,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=64,
        global_head_dim=128,
        sliding_window=512,
        hidden_size_per_layer_input=64,
        vocab_size_per_layer_input=32768,
        final_logit_softcapping=30.0,
    ),
}


# -- checkpoints (parent) ----------------------------------------------------------------------


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Unit-scale random weights (init leaves norms at 1 and tiny weights): non-degenerate greedy."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or name.endswith(("inv_freq", "embed_scale")):
            continue
        if t.dim() <= 1:
            t.add_(0.2 * torch.randn(t.shape, generator=gen))
        else:
            t.copy_(torch.randn(t.shape, generator=gen) * t.shape[-1] ** -0.5)


def build_checkpoint(name: str, root: Path) -> Path:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(0)
    model = Gemma4ForCausalLM(Gemma4TextConfig(max_position_embeddings=8192, **CONFIGS[name]))
    _randomize(model, seed=0)
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    return path


# -- one engine in its own process (worker) ----------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; `ru_maxrss` off Linux)."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _ours(path: str, dtype: str, ctx: int):
    import gemma_mtp
    from gemma_mtp.sampling import SamplingParams

    engine = gemma_mtp.load(path, dtype=dtype, device="cpu", ctx_size=ctx)
    engine.stop_ids = frozenset()  # random weights: never stop early
    greedy = SamplingParams(temperature=0)

    def generate(prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        tokens, stamps = [], []
        for step in engine.stream(prompt, n_predict=n, sampling=greedy):
            stamps.append(time.perf_counter())
            tokens += step.token_ids
        return tokens, stamps

    return generate


def _transformers(path: str, dtype: str):
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).eval()

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.seen_prompt = False

        def put(self, value) -> None:
            if self.seen_prompt:  # the first put is the prompt itself
                self.times.append(time.perf_counter())
            self.seen_prompt = True

        def end(self) -> None:
            pass

    def generate(prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        ids = torch.tensor([prompt])
        stamps = Stamps()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                eos_token_id=None,
                pad_token_id=0,
                streamer=stamps,
            )
        return out[0, len(prompt) :].tolist(), stamps.times

    return generate


def _worker_loop(conn, spec: dict[str, Any]) -> None:
    """Child process: load one engine, warm up, then run one timed generation per "run" message."""
    try:
        torch.set_num_threads(spec["threads"])
        if spec["engine"] == "ours":
            import gemma_mtp  # noqa: F401  (import cost goes into the baseline, not the model)
        else:
            import transformers  # noqa: F401
        base_rss = _peak_rss_mb()
        if spec["engine"] == "ours":
            generate = _ours(spec["path"], spec["dtype"], spec["ctx"])
        else:
            generate = _transformers(spec["path"], spec["dtype"])
        prompt, n = spec["prompt"], spec["n"]
        generate(prompt, min(n, 8))  # warm-up
        conn.send({"base_rss_mb": base_rss})
        while conn.recv() == "run":
            t0 = time.perf_counter()
            tokens, stamps = generate(prompt, n)
            if len(stamps) != n:
                raise RuntimeError(f"{len(stamps)} timestamps for {n} tokens")
            conn.send(
                {
                    "ms_per_token": (stamps[-1] - stamps[0]) * 1e3 / (n - 1),
                    "prefill_ms": (stamps[0] - t0) * 1e3,
                    "tokens": tokens,
                }
            )
        conn.send({"peak_rss_mb": _peak_rss_mb()})
    except Exception:
        conn.send({"error": traceback.format_exc()})


class Worker:
    """One engine in its own spawned process, driven one timed generation at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = f"{spec['engine']} {spec['config']} {spec['dtype']}"
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, spec), daemon=True)
        self.proc.start()
        self.info = self._recv()

    def _recv(self) -> dict[str, Any]:
        try:
            msg = self.conn.recv()
        except EOFError:
            raise SystemExit(f"worker {self.name} died (exit code {self.proc.exitcode})") from None
        if "error" in msg:
            raise SystemExit(f"worker {self.name} failed:\n{msg['error']}")
        return msg

    def run(self) -> dict[str, Any]:
        self.conn.send("run")
        return self._recv()

    def close(self) -> dict[str, Any]:
        self.conn.send("stop")
        self.info.update(self._recv())
        self.proc.join()
        return self.info


def compare(spec: dict[str, Any], reps: int) -> dict[str, dict[str, Any]]:
    """Both engines side by side, timed runs alternating (ours, transformers, ours, ...) so that a
    change in machine load during the run hits both alike."""
    workers = {e: Worker({**spec, "engine": e}) for e in ENGINES}
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    try:
        for _ in range(reps):
            for engine, w in workers.items():
                runs[engine].append(w.run())
    finally:
        info = {e: w.close() for e, w in workers.items()}
    return {
        e: {
            **info[e],
            "ms_per_token": median([r["ms_per_token"] for r in runs[e]]),
            "ms_per_token_reps": [r["ms_per_token"] for r in runs[e]],
            "prefill_ms": median([r["prefill_ms"] for r in runs[e]]),
            "tokens": runs[e][-1]["tokens"],
        }
        for e in ENGINES
    }


# -- profile ---------------------------------------------------------------------------------


def profile(path: Path, dtype: str, args: argparse.Namespace, prompt: list[int]) -> None:
    """cProfile our engine over `--n` tokens (after a warm-up) and print the top entries."""
    torch.set_num_threads(args.threads)
    generate = _ours(str(path), dtype, args.ctx)
    generate(prompt, 8)
    prof = cProfile.Profile()
    prof.enable()
    generate(prompt, args.n)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


# -- main --------------------------------------------------------------------------------------


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per engine; the median is reported")
    p.add_argument("--configs", default="tiny,small", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--dtypes", default="float32,bfloat16", help=f"comma list of {', '.join(DTYPES)}")
    p.add_argument("--prompt-len", type=int, default=32, help="random prompt length (default 32)")
    p.add_argument("--ctx", type=int, default=4096, help="our cache size, -c/--ctx-size (default 4096)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--out", default=str(RESULTS / "plain_decode.jsonl"), help="JSONL file to append to")
    p.add_argument("--profile", action="store_true", help="cProfile our engine instead of comparing")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"--configs: unknown config {c!r}; choose from {', '.join(CONFIGS)}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if args.n < 2:
        p.error("--n must be at least 2 (decode speed is measured after the first token)")
    return args


def _agree(ours: list[int], theirs: list[int]) -> str:
    if ours == theirs:
        return "yes"
    first = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
    )
    return f"WARN differ@{first}"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import transformers

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    common = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "timestamp": timestamp(),
        "threads": args.threads,
        "device": "cpu",
        "cpu": cpu_name(),
        "n": args.n,
        "reps": args.reps,
        "prompt_len": args.prompt_len,
    }
    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="bench_plain_decode_") as tmp:
        for config in args.configs:
            path = build_checkpoint(config, Path(tmp))
            vocab = CONFIGS[config]["vocab_size"]
            prompt = [rng.randrange(3, vocab) for _ in range(args.prompt_len)]
            if args.profile:
                for dtype in args.dtypes:
                    print(f"== cProfile: ours, {config}, {dtype}, {args.n} tokens")
                    profile(path, dtype, args, prompt)
                continue
            for dtype in args.dtypes:
                spec = {"config": config, "dtype": dtype, "path": str(path), "prompt": prompt}
                spec.update(n=args.n, ctx=args.ctx, threads=args.threads)
                result = compare(spec, args.reps)
                agree = _agree(result["ours"]["tokens"], result["transformers"]["tokens"])
                for engine, r in result.items():
                    rows.append(
                        {
                            **common,
                            "config": config,
                            "dtype": dtype,
                            "engine": engine,
                            "tokens_per_s": 1e3 / r["ms_per_token"],
                            "ms_per_token": r["ms_per_token"],
                            "ms_per_token_reps": r["ms_per_token_reps"],
                            "ms_per_token_min": min(r["ms_per_token_reps"]),
                            "prefill_ms": r["prefill_ms"],
                            "peak_rss_mb": r["peak_rss_mb"],
                            "base_rss_mb": r["base_rss_mb"],
                            "tokens_agree": agree == "yes",
                            "loadavg_1m": os.getloadavg()[0],
                        }
                    )
                ours, hf = result["ours"], result["transformers"]
                table.append(
                    {
                        "config": config,
                        "dtype": dtype,
                        "ours tok/s": 1e3 / ours["ms_per_token"],
                        "hf tok/s": 1e3 / hf["ms_per_token"],
                        "ours/hf": hf["ms_per_token"] / ours["ms_per_token"],
                        "ours ms/tok": ours["ms_per_token"],
                        "hf ms/tok": hf["ms_per_token"],
                        "ours RSS MB": ours["peak_rss_mb"],
                        "hf RSS MB": hf["peak_rss_mb"],
                        "tokens": agree,
                    }
                )
                print(format_table(table[-1:], list(table[-1])), file=sys.stderr, flush=True)
    if args.profile:
        return 0
    out = append_jsonl(args.out, rows)
    head = f"plain greedy decode, n={args.n}, reps={args.reps} (median), threads={args.threads}, "
    print(head + f"torch {torch.__version__}, transformers {transformers.__version__}, {common['cpu']}")
    print(format_table(table, list(table[0])) if table else "(nothing run)")
    print(f"rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
