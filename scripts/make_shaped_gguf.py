"""Write a Gemma 4 target GGUF and its MTP assistant GGUF with a released model's exact shapes and
random weights, for speed measurements on the shapes people run (issue 21).

    .venv/bin/python scripts/make_shaped_gguf.py --shape e2b --type Q4_K_M --assistant-type Q8_0 \
        --out /tmp/shapes/e2b [--check]

Shapes, with where each value comes from: src/gemma_mtp/tools/shapes.py. Names, metadata and
tensor types are those of our converter and quantizer (src/gemma_mtp/tools/shaped_gguf.py), so the
files are what `gemma-mtp convert` + `gemma-mtp quantize` would make of the released checkpoint.
Written tensor by tensor, a slab of rows at a time: memory stays small for 26B/31B too.

Files in OUT: gemma-4-SHAPE.TYPE.gguf, gemma-4-SHAPE-assistant.ATYPE.gguf (llama.cpp's mainline
layout; for E2B/E4B without the centroid head, which llama.cpp refuses), and for E2B/E4B also
gemma-4-SHAPE-assistant.ATYPE.centroids.gguf (with it: gemma-mtp only), and manifest.json.
With the released vocabulary size the tokenizer of llama.cpp's ggml-vocab-gemma-4.gguf is embedded.

--check loads both with gemma-mtp and runs a few MTP rounds, and, when the llama.cpp build of
scripts/build_llama_cpp.sh is there, runs llama-bench on the target and llama-speculative-simple
with --spec-type draft-mtp on the pair. --layers/--vocab make small versions, for tests only.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from llama_cpp_server import llama_cpp_dir

from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.tools.shaped_gguf import DEFAULT_POOL_BLOCKS, write_shaped
from gemma_mtp.tools.shapes import SHAPES, VOCAB, shape_configs

PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # any ids: the weights are random


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """One stderr line per few percent: tensor, share done, rate, peak RSS."""

    def __init__(self, label: str) -> None:
        self.label, self.t0, self.last = label, time.perf_counter(), -1.0

    def __call__(self, done: int, total: int, tensor: str) -> None:
        share = done / total if total else 1.0
        if share - self.last < 0.02 and done < total:
            return
        self.last = share
        dt = time.perf_counter() - self.t0
        rate = done / dt / 2**20 if dt > 0 else 0.0
        print(
            f"  {self.label}: {100 * share:5.1f}%  {done / 2**30:6.2f}/{total / 2**30:.2f} GiB  "
            f"{rate:6.1f} MiB/s  rss {peak_rss_mb():.0f} MB  {tensor}",
            file=sys.stderr,
            flush=True,
        )


def vocab_file(vocab: int, wanted: bool) -> Path | None:
    if not wanted or vocab != VOCAB:
        return None
    from gemma_mtp.assets import llama_cpp_vocab

    return llama_cpp_vocab("gemma-4")


def write_all(args: argparse.Namespace) -> dict:
    target_cfg, assistant_cfg, _ = shape_configs(
        args.shape, layers=args.layers, vocab=args.vocab, experts=args.experts
    )
    vocab = vocab_file(target_cfg.vocab_size, not args.no_tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gemma-4-{args.shape}"
    jobs = [("target", target_cfg, args.type, False, f"{stem}.{args.type}.gguf")]
    jobs.append(
        (
            "assistant",
            assistant_cfg,
            args.assistant_type,
            False,
            f"{stem}-assistant.{args.assistant_type}.gguf",
        )
    )
    if assistant_cfg.use_ordered_embeddings:
        name = f"{stem}-assistant.{args.assistant_type}.centroids.gguf"
        jobs.append(("assistant_centroids", assistant_cfg, args.assistant_type, True, name))
    files = {}
    for role, config, type_name, keep, filename in jobs:
        t0 = time.perf_counter()
        made = write_shaped(
            args.out / filename,
            config,
            type_name,
            seed=args.seed,
            name=f"Gemma 4 {args.shape.upper()}{' assistant' if config.is_assistant else ''} (shaped, random)",
            pool_blocks=args.pool_blocks,
            keep_centroids=keep,
            vocab_from=vocab,
            progress=Progress(role),
        )
        files[role] = {
            "file": filename,
            "type": type_name,
            "bytes": made.n_bytes,
            "tensors": len(made.tensors),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{role}: {made.path} ({made.n_bytes / 2**30:.2f} GiB)", file=sys.stderr, flush=True)
    return files


def check_ours(out: Path, files: dict) -> dict:
    import gemma_mtp
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions

    t0 = time.perf_counter()
    draft = files.get("assistant_centroids", files["assistant"])["file"]
    engine = gemma_mtp.load(str(out / files["target"]["file"]), draft=str(out / draft), ctx_size=256)
    load_s = time.perf_counter() - t0
    vocab = engine.config.vocab_size
    prompt = [i % vocab for i in PROMPT_IDS]
    result = engine.generate(
        prompt, n_predict=8, sampling=SamplingParams(temperature=0), spec=SpecOptions(type="mtp")
    )
    return {
        "loads": True,
        "load_s": round(load_s, 1),
        "generated": result.token_ids,
        "decode_tokens_per_s": round(result.timings.decode_tokens_per_s, 2),
        "speculative": {k: result.speculative[k] for k in ("rounds", "drafted", "accepted")},
        "peak_rss_mb": round(peak_rss_mb()),
    }


def _run(cmd: list[str], timeout: int) -> tuple[int, str]:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    return done.returncode, done.stdout + done.stderr


def check_llama_cpp(out: Path, files: dict, threads: int) -> dict:
    bin_dir = llama_cpp_dir() / "bin"
    if not (llama_cpp_dir() / ".done").is_file():
        return {"skipped": f"no llama.cpp build at {llama_cpp_dir()} (scripts/build_llama_cpp.sh)"}
    target, assistant = out / files["target"]["file"], out / files["assistant"]["file"]
    report: dict = {}
    rc, log = _run([str(bin_dir / "llama-bench"), "-m", str(target), "-p", "16", "-n", "4", "-r", "1",
                    "-t", str(threads), "-o", "json"], 1800)  # fmt: skip
    try:
        rows = json.loads(log[log.index("[") : log.rindex("]") + 1]) if rc == 0 else []
    except ValueError:
        rows = []
    report["llama_bench"] = {
        "rc": rc,
        "tokens_per_s": {
            f"{'pp' if r['n_prompt'] else 'tg'}{r['n_prompt'] or r['n_gen']}": r["avg_ts"] for r in rows
        },
        **({"log": log[-1500:]} if rc else {}),
    }
    cmd = [str(bin_dir / "llama-speculative-simple"), "-m", str(target), "-md", str(assistant),
           "--spec-type", "draft-mtp", "-p", "The capital of France is", "-n", "16", "-c", "512",
           "-t", str(threads), "--temp", "0"]  # fmt: skip
    rc, log = _run(cmd, 1800)
    found = dict(re.findall(r"(n_drafted|n_accept|n_predict)\s*=\s*(\d+)", log))
    report["llama_speculative_simple"] = {
        "rc": rc,
        **{k: int(v) for k, v in found.items()},
        **({"log": log[-1500:]} if rc else {}),
    }
    report["loads_and_runs"] = report["llama_bench"]["rc"] == 0 and rc == 0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, choices=list(SHAPES))
    parser.add_argument("--type", default="Q4_K_M", help="the target's quantize TYPE (default Q4_K_M)")
    parser.add_argument("--assistant-type", default="Q8_0", help="the assistant's TYPE (default Q8_0)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pool-blocks",
        type=int,
        default=DEFAULT_POOL_BLOCKS,
        help=f"quantized blocks drawn from pools of this many encoded blocks (default {DEFAULT_POOL_BLOCKS}); "
        "0 encodes every block (hours for 26B/31B)",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="embed no tokenizer")
    parser.add_argument("--check", action="store_true", help="load and run the files (ours, llama.cpp)")
    parser.add_argument("-t", "--threads", type=int, default=2, help="threads for --check's llama.cpp runs")
    parser.add_argument("--layers", type=int, default=None, help="tests only: fewer layers")
    parser.add_argument("--vocab", type=int, default=None, help="tests only: a smaller vocabulary")
    parser.add_argument("--experts", type=int, default=None, help="tests only: fewer experts (26b-a4b)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        files = write_all(args)
    except GemmaMTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = {
        "made_by": "scripts/make_shaped_gguf.py",
        "command": ["scripts/make_shaped_gguf.py", *(argv if argv is not None else sys.argv[1:])],
        "shape": args.shape,
        "layers": args.layers,
        "vocab": args.vocab,
        "experts": args.experts,
        "seed": args.seed,
        "pool_blocks": args.pool_blocks,
        "files": files,
        "write_s": round(time.perf_counter() - t0, 1),
        "write_peak_rss_mb": round(peak_rss_mb()),
    }
    if args.check:
        manifest["check"] = {"gemma_mtp": check_ours(args.out, files)}
        manifest["check"]["llama_cpp"] = check_llama_cpp(args.out, files, args.threads)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
