"""Weight-only quantized kernels vs float matmuls on this CPU, and what they do to a real model.

    .venv/bin/python benchmarks/bench_quant_kernels.py --threads 1 --reps 7

Part 1 (`kernel` rows): one matmul `[M, K] x [N, K]^T` for M = 1..8 rows, on the Gemma 3 270M's
tied head (262144 x 640) and a layer matrix (2048 x 640, 640 x 2048): float32 and bfloat16
`F.linear`, `_weight_int8pack_mm` (int8, one scale per row), `_weight_int4pack_mm_for_cpu` with
one and two 4-bit digits (two digits: how Q5_0/Q8_0 are held exactly), and our native kernels
(`q8 (ours)`: int8 codes with a float32 scale per 32; `gguf Q8_0 (ours)`: the file's Q8_0 blocks
read in place, the default; both round activations to int8 per 32). Weights are random; cost
does not depend on values. Layer matrices are small enough to stay in cache between repetitions,
so their numbers flatter every method alike; the model rows below do not have that problem.

Part 2 (`forward` rows): the real Gemma 3 270M Q4_K_M GGUF, one target forward over T = 1..5 new
positions after a 64-token context, with logits at every position (what verifying T-1 drafted
tokens costs), for each load: `fp32` and `bf16` (dequantized), `quant` (quantized kernels with
bfloat16 activations), `auto` (the CPU default: GGUF blocks in place, float32 activations), and
the `--variants` given as `name:TYPE=kind,...` (default `q8int8:Q8_0=int8` and `int8:` every type
int8). All variants are loaded in this one process and timed interleaved, so machine load hits
each alike (every repetition runs every (T, load) once, in turn); the median of `--reps` is
reported, with the ratio to T = 1.

Part 3 (`decode` rows, `--decode N`): greedy generation of N tokens on a code prompt through the
engine, plain and with n-gram speculation (`--n-max`, default 3 and 4), for `bf16` and `quant`
(and the variants): decode tokens/s, acceptance, and whether the speculative tokens equal plain's.
Runs are interleaved across loads and modes as above.

Rows are appended to `benchmarks/results/quant_kernels.jsonl`; a table is printed per part.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, git_dirty, median, timestamp
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from gemma_mtp import native as native_build
from gemma_mtp.api import Engine
from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer
from gemma_mtp.weights.gguf_loader import load_gguf_model

SHAPES = ((262144, 640), (2048, 640), (640, 2048))
CODE_PROMPT = '''def area_of_square(side):
    """Return the area of a square with the given side."""
    return side * side


def area_of_rectangle(width, height):
    """Return the area of a rectangle with the given width and height."""
    return width * height


def area_of_triangle(base, height):
'''
ALL_INT8 = "Q8_0=int8,Q5_0=int8,Q4_K=int8,Q6_K=int8"


NO_ZERO = torch.empty(0)


def kernel_methods(n: int, k: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) * 0.02
    wb = w.bfloat16()
    q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    s8 = torch.rand(n, generator=gen).bfloat16()

    def int4(digits: int):
        codes = torch.randint(0, 16, (n, digits * k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        sz = torch.rand(digits * k // 32, n, 2, generator=gen).bfloat16()
        return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x if digits == 1 else x.repeat(1, digits), packed, 32, sz
        )

    methods = {
        "fp32": lambda x: F.linear(x.float(), w),
        "bf16": lambda x: F.linear(x, wb),
        "int8pack": lambda x: torch.ops.aten._weight_int8pack_mm(x, q8, s8),
        "int4pack": int4(1),
        "int4pack x2": int4(2),
    }
    native = native_build.module()
    if native is not None:  # ours: int8 codes, float32 scale per 32, int8 activations per 32
        d = torch.rand(n, k // 32, generator=gen) * 0.01
        methods["q8 (ours)"] = lambda x: native.q8_mm(x, q8, d, NO_ZERO, 32)
        # ours on Q8_0 blocks in place (34 bytes per 32 weights), the default for GGUF files
        blocks = torch.from_numpy(quantize(w.numpy(), GGMLQuantizationType.Q8_0))
        methods["gguf Q8_0 (ours)"] = lambda x: native.gguf_mm(x, [blocks], [int(GGMLQuantizationType.Q8_0)])
    return methods


def time_interleaved(fns: dict, reps: int, inner: int) -> dict:
    """ms per call, one list per key; every repetition runs each call once, in turn, so a burst of
    machine load lands on one repetition of everything rather than on every repetition of one."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append((time.perf_counter() - start) * 1e3 / inner)
    return out


def bench_kernels(reps: int, max_rows: int, base: dict) -> list[dict]:
    rows = []
    for n, k in SHAPES:
        methods = kernel_methods(n, k)
        inputs = {m: torch.randn(m, k).bfloat16() for m in range(1, max_rows + 1)}
        calls = {(name, m): (lambda f=f, x=x: f(x)) for m, x in inputs.items() for name, f in methods.items()}
        times = time_interleaved(calls, reps, 1 if n > 100_000 else 20)
        for (name, m), ms in times.items():
            rows.append(
                base
                | {
                    "bench": "kernel",
                    "shape": f"{n}x{k}",
                    "method": name,
                    "M": m,
                    "ms": median(ms),
                    "ms_reps": [round(t, 4) for t in ms],
                }
            )
    return rows


def parse_variants(spec: str) -> dict[str, dict[str, str]]:
    out = {}
    for item in filter(None, spec.split(";")):
        name, _, kinds = item.partition(":")
        out[name] = dict(pair.split("=") for pair in filter(None, kinds.split(",")))
    return out


def bench_forward(reps: int, positions: int, variants: dict, base: dict) -> list[dict]:
    path = gemma3_270m_gguf()
    loads = {
        "fp32": {"dtype": "float32"},
        "bf16": {"dtype": "bfloat16", "quantized": False},
        "quant": {"dtype": "bfloat16"},
        "auto": {"dtype": "auto"},  # the CPU default: q8 kernel, float32 activations
    } | {name: {"dtype": "bfloat16", "kernels": kinds} for name, kinds in variants.items()}
    models, caches = {}, {}
    context = torch.randint(3, 200_000, (1, 64), generator=torch.Generator().manual_seed(0))
    for name, options in loads.items():
        model, _, report = load_gguf_model(path, **options)
        models[name], caches[name] = model, model.make_cache(max_context=256, max_draft=8)
        with torch.no_grad():
            model(context, torch.arange(64)[None], caches[name])
        print(f"{name}: {report.notices[-1] if report.notices else ''}")

    def step(name: str, t: int) -> Callable[[], None]:
        model, cache = models[name], caches[name]
        tokens = torch.randint(3, 200_000, (1, t), generator=torch.Generator().manual_seed(t))

        @torch.no_grad()
        def run() -> None:
            hidden = model(tokens, torch.arange(64, 64 + t)[None], cache).hidden
            model.logits(hidden)
            cache.rollback(torch.tensor([64]))

        return run

    calls = {(name, t): step(name, t) for t in range(1, positions + 1) for name in models}
    rows = []
    for (name, t), ms in time_interleaved(calls, reps, 1).items():
        rows.append(
            base
            | {
                "bench": "forward",
                "load": name,
                "kernels": loads[name].get("kernels"),
                "T": t,
                "ms": median(ms),
                "ms_reps": [round(v, 3) for v in ms],
            }
        )
    for row in rows:
        one = next(r["ms"] for r in rows if r["load"] == row["load"] and r["T"] == 1)
        row["vs_T1"] = row["ms"] / one
    return rows


def bench_decode(reps: int, n: int, n_max: list[int], variants: dict, base: dict) -> list[dict]:
    path = gemma3_270m_gguf()
    loads = {"bf16": {"quantized": False}, "quant": {}} | {k: {"kernels": v} for k, v in variants.items()}
    prompt = load_tokenizer(path).encode(CODE_PROMPT)
    greedy = SamplingParams(temperature=0)
    engines = {}
    for name, options in loads.items():
        model, config, _ = load_gguf_model(path, dtype="bfloat16", **options)
        engines[name] = Engine(model, config, ctx_size=1024, stop_ids=frozenset())  # no EOS: n tokens
        engines[name].generate(prompt[:8], n_predict=4, sampling=greedy, spec=SpecOptions())  # warm-up
    modes = {"plain": SpecOptions()} | {f"ngram{k}": SpecOptions(type="ngram", n_max=k) for k in n_max}
    results: dict = {(name, mode): [] for name in engines for mode in modes}
    for _ in range(reps):
        for (name, mode), runs in results.items():
            runs.append(engines[name].generate(prompt, n_predict=n, sampling=greedy, spec=modes[mode]))
    rows = []
    for (name, mode), runs in results.items():
        plain = results[name, "plain"][0].token_ids
        spec = runs[0].speculative or {}
        rows.append(
            base
            | {
                "bench": "decode",
                "load": name,
                "kernels": loads[name].get("kernels"),
                "mode": mode,
                "n": n,
                "tok_s": median([r.timings.decode_tokens_per_s for r in runs]),
                "tok_s_reps": [round(r.timings.decode_tokens_per_s, 2) for r in runs],
                "acceptance": spec.get("acceptance_rate"),
                "mean_accepted_length": spec.get("mean_accepted_length"),
                "same_as_plain": all(r.token_ids == plain for r in runs),
            }
        )
    return rows


def decode_table(rows: list[dict]) -> str:
    return format_table(rows, ["load", "mode", "tok_s", "mean_accepted_length", "same_as_plain"])


def kernel_table(rows: list[dict]) -> str:
    shaped = {}
    for r in rows:
        shaped.setdefault((r["shape"], r["M"]), {"shape": r["shape"], "M": r["M"]})[r["method"]] = r["ms"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return format_table(list(shaped.values()), ["shape", "M", *methods])


def forward_table(rows: list[dict]) -> str:
    by_load = {}
    for r in rows:
        entry = by_load.setdefault(r["load"], {"load": r["load"]})
        entry[f"T={r['T']} ms"] = r["ms"]
        entry[f"T={r['T']}/T=1"] = r["vs_T1"]
    cols = ["load"] + [c for c in next(iter(by_load.values())) if c != "load"]
    return format_table(list(by_load.values()), cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=8, help="kernel rows M = 1..ROWS")
    ap.add_argument("--positions", type=int, default=5, help="forward positions T = 1..POSITIONS")
    ap.add_argument("--variants", default=f"q8int8:Q8_0=int8;int8:{ALL_INT8}")
    ap.add_argument("--decode", type=int, default=0, help="part 3: tokens per generation (0: skip)")
    ap.add_argument("--n-max", default="3,4", help="part 3: n-gram draft lengths")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "quant_kernels.jsonl"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = {
        "commit": git_commit(),
        "dirty": git_dirty(),
        "time": timestamp(),
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "reps": args.reps,
    }
    if not args.skip_kernels:
        rows = bench_kernels(args.reps, args.rows, base)
        append_jsonl(args.out, rows)
        print("ms per matmul (median), bfloat16 activations [M, K] x weight [N, K]^T\n" + kernel_table(rows))
    if not args.skip_forward:
        rows = bench_forward(args.reps, args.positions, parse_variants(args.variants), base)
        append_jsonl(args.out, rows)
        print("Gemma 3 270M forward + logits at every position, ms (median)\n" + forward_table(rows))
    if args.decode:
        n_max = [int(k) for k in args.n_max.split(",")]
        rows = bench_decode(args.reps, args.decode, n_max, parse_variants(args.variants), base)
        append_jsonl(args.out, rows)
        print(f"Gemma 3 270M greedy decode of {args.decode} tokens, tokens/s (median)\n" + decode_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
