"""Our MTP decoding vs transformers' assisted generation on the same tiny pair, in one run.

    python benchmarks/bench_mtp_vs_transformers.py [-n 64] [--reps 3] [--n-max 3] [--threads 1]

The pair is the test suite's E2B-shaped target and its centroid-head assistant (tests/hf_reference.py;
needs the dev extra). Reported, greedy, per engine: decode tokens/s (prefill excluded for ours;
transformers' generate() is timed whole minus a prefill-only call), rounds, draft and verify ms per
round; plus our plain decoding and our draft-model strategy with the target drafting for itself
(every draft accepted), which isolates the round overhead. Outputs are checked for equality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, timestamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import hf_reference as ref  # noqa: E402

from gemma_mtp.api import Engine  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402

GREEDY = SamplingParams(temperature=0)
PROMPTS = [[2, *range(10, 30)], [2, 7, 9, 7, 9, 7, 9, 11, 13], [2, 100, 50, 25, 12, 6, 3]]


def ours(engine: Engine, spec: SpecOptions, n: int, reps: int) -> dict:
    rates, outs, draft_ms, verify_ms, rounds = [], [], 0.0, 0.0, 0
    for _ in range(reps):
        tokens, seconds, outs = 0, 0.0, []
        for p in PROMPTS:
            r = engine.generate(p, n_predict=n, sampling=GREEDY, spec=spec)
            tokens += r.n_generated - 1
            seconds += r.timings.decode_ms / 1e3
            outs.append(r.token_ids)
            if r.speculative:
                draft_ms += r.speculative["draft_ms"]
                verify_ms += r.speculative["verify_ms"]
                rounds += r.speculative["rounds"]
        rates.append(tokens / seconds)
    per_round = (
        {"draft_ms_per_round": draft_ms / rounds, "verify_ms_per_round": verify_ms / rounds} if rounds else {}
    )
    return {"tokens_per_s": median(rates), "outputs": outs, **per_round}


@torch.no_grad()
def transformers_rate(target, assistant, n: int, reps: int) -> dict:
    rates, outs = [], []
    for _ in range(reps):
        tokens, seconds, outs = 0, 0.0, []
        for p in PROMPTS:
            ids = torch.tensor([p])
            kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
            t0 = time.perf_counter()
            target.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = target.generate(ids, max_new_tokens=n, min_new_tokens=n, assistant_model=assistant, **kw)
            seconds += time.perf_counter() - t0 - prefill
            tokens += n - 1
            outs.append(out[0, len(p) :].tolist())
        rates.append(tokens / seconds)
    return {"tokens_per_s": median(rates), "outputs": outs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-max", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "mtp_vs_transformers.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        target_ref = ref.build_e2b_like(Path(tmp) / "target")
        assistant_ref = ref.build_assistant(Path(tmp) / "assistant", target_ref, use_ordered_embeddings=True)
        assistant_ref.model.generation_config.num_assistant_tokens = args.n_max
        target, config = ref.load_ours(target_ref.path)
        assistant, _ = ref.load_ours(assistant_ref.path)
        mtp_engine = Engine(target, config, ctx_size=512, stop_ids=frozenset(), drafter=assistant)
        self_engine = Engine(target, config, ctx_size=512, stop_ids=frozenset(), drafter=target)
        mtp_engine.generate(PROMPTS[0], n_predict=8, sampling=GREEDY)  # warm-up
        with ref.reference_patches():
            hf = transformers_rate(target_ref.model, assistant_ref.model, args.n, args.reps)
        results = {
            "transformers assisted (mtp)": hf,
            "ours plain": ours(mtp_engine, SpecOptions(), args.n, args.reps),
            "ours mtp": ours(mtp_engine, SpecOptions(type="mtp", n_max=args.n_max), args.n, args.reps),
            "ours draft=target": ours(
                self_engine, SpecOptions(type="draft", n_max=args.n_max), args.n, args.reps
            ),
        }
    plain = results["ours plain"]["outputs"]
    common = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "n": args.n,
        "n_max": args.n_max,
        "commit": git_commit(),
        "timestamp": timestamp(),
        "torch": torch.__version__,
    }
    rows = []
    for name, r in results.items():
        rows.append(
            {
                **common,
                "engine": name,
                "tokens_per_s": r["tokens_per_s"],
                "vs_transformers": r["tokens_per_s"] / hf["tokens_per_s"],
                "same_output_as_plain": r["outputs"] == plain,
                "draft_ms_per_round": r.get("draft_ms_per_round"),
                "verify_ms_per_round": r.get("verify_ms_per_round"),
            }
        )
    append_jsonl(args.out, rows)
    print(
        format_table(
            rows,
            [
                "engine",
                "tokens_per_s",
                "vs_transformers",
                "same_output_as_plain",
                "draft_ms_per_round",
                "verify_ms_per_round",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
