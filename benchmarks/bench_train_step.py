"""One `train-drafter` step with the dense token loss against the candidate-restricted one, alternating.

    .venv/bin/python benchmarks/bench_train_step.py --batch 4 --seq-len 192 --draft-steps 3 --reps 3

The embedded Gemma 3 270M target and the demo drafter (`assets/drafters/gemma3-270m-mtp.gguf`,
2,048 clusters of 128 tokens, top 32 scored): a batch of `--batch` sequences of `--seq-len` tokens
from the self-distillation shards (`--shards`, read only; the first shard with enough tokens), or
the target's own features of random tokens when there are none. Each measured step starts from the
drafter's weights and a fresh AdamW: the loss (unrolled draft steps and the token + centroid
losses), its backward and the optimiser step, timed apart. Steps alternate full, clusters, full, ...
after one warm-up step each, so a change in machine load hits both alike; medians are reported.
Rows go to ``benchmarks/results/train_step.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path

import torch
from _common import RESULTS, append_jsonl, cpu_name, format_table, git_commit, git_dirty, median, timestamp

from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.train.clusters import cluster_of
from gemma_mtp.train.data import Features, target_features
from gemma_mtp.train.export import load_assistant
from gemma_mtp.train.loop import load_target
from gemma_mtp.train.objective import draft_loss
from gemma_mtp.train.shards import read_shard, shard_paths

DRAFTER = Path(__file__).resolve().parent.parent / "assets" / "drafters" / "gemma3-270m-mtp.gguf"
SHARDS = Path.home() / ".cache" / "gemma-mtp" / "drafter-corpus" / "shards"
MODES = ("full", "clusters")


def batch_features(target, shards: Path, batch: int, seq_len: int) -> tuple[Features, str]:
    for path in sorted(p for sub in (shards / "train").glob("**/") for p in shard_paths(sub)):
        try:
            feats, _ = read_shard(path)
        except (OSError, RuntimeError):  # a shard being written
            continue
        if len(feats) >= batch and feats.tokens.shape[1] >= seq_len:
            rows = feats.rows(torch.arange(batch))
            cut = {k: v[:, :, :seq_len] for k, v in rows.keys.items()}
            values = {k: v[:, :, :seq_len] for k, v in rows.values.items()}
            part = Features(
                tokens=rows.tokens[:, :seq_len],
                hidden=rows.hidden[:, :seq_len],
                keys=cut,
                values=values,
                top_ids=rows.top_ids[:, :seq_len],
                top_probs=rows.top_probs[:, :seq_len],
            )
            return part, str(path)
    vocab = target.config.vocab_size
    tokens = torch.randint(3, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 2
    return target_features(target, tokens, top_k=8).to("cpu"), "random tokens (target features)"


def one_step(drafter, target, batch: Features, mode: str, steps: int, bf16: bool) -> dict:
    model = copy.deepcopy(drafter).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    head = model.masked_embedding
    cluster = cluster_of(head.token_ordering, head.num_centroids)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with autocast:
        parts = draft_loss(
            model,
            target,
            batch,
            steps=steps,
            step_decay=0.8,
            cluster_weight=1.0,
            cluster=cluster,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            token_loss=mode,
        )
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    parts.total.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    t3 = time.perf_counter()
    return {
        "loss_s": t1 - t0,
        "backward_s": t2 - t1,
        "optimizer_s": t3 - t2,
        "step_s": t3 - t0,
        "token_loss": [round(float(x), 4) for x in parts.token],
        "cluster_loss": [round(float(x), 4) for x in parts.cluster],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=192)
    ap.add_argument("--draft-steps", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shards", type=Path, default=SHARDS)
    ap.add_argument("--drafter", type=Path, default=DRAFTER)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off")
    args = ap.parse_args()

    target, _ = load_target(gemma3_270m_gguf(), "cpu")
    drafter, _ = load_assistant(args.drafter)
    batch, source = batch_features(target, args.shards, args.batch, args.seq_len)
    bf16 = args.autocast == "bf16"
    for mode in MODES:  # warm-up: allocator, kernels, the target's first embedding lookups
        one_step(drafter, target, batch, mode, args.draft_steps, bf16)
    runs = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode in MODES:
            runs[mode].append(one_step(drafter, target, batch, mode, args.draft_steps, bf16))
    common = {
        "bench": "train_step",
        "commit": git_commit(),
        "dirty": git_dirty(),
        "time": timestamp(),
        "device": cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": "bf16-autocast" if bf16 else "float32",
        "batch": args.batch,
        "seq_len": args.seq_len,
        "draft_steps": args.draft_steps,
        "positions": args.batch * (args.seq_len - args.draft_steps),
        "data": source,
        "drafter": str(args.drafter),
    }
    rows = []
    for mode in MODES:
        med = {
            k: median([r[k] for r in runs[mode]]) for k in ("loss_s", "backward_s", "optimizer_s", "step_s")
        }
        rows.append(
            {
                **common,
                "token_loss_mode": mode,
                **{f"median_{k}": round(v, 3) for k, v in med.items()},
                "step_s_all": [round(r["step_s"], 3) for r in runs[mode]],
                "token_loss": runs[mode][0]["token_loss"],
                "cluster_loss": runs[mode][0]["cluster_loss"],
            }
        )
    append_jsonl(RESULTS / "train_step.jsonl", rows)
    full, ours = rows
    table = [
        {
            "token loss": r["token_loss_mode"],
            "step s": f"{r['median_step_s']:.2f}",
            "loss s": f"{r['median_loss_s']:.2f}",
            "backward s": f"{r['median_backward_s']:.2f}",
            "optimizer s": f"{r['median_optimizer_s']:.2f}",
            "token loss by step": " / ".join(f"{x:.3f}" for x in r["token_loss"]),
        }
        for r in rows
    ]
    print(
        f"data: {source}; {common['positions']} positions x {args.draft_steps} draft steps, {common['dtype']}"
    )
    print(format_table(table, list(table[0])))
    print(f"full / clusters, median step: {full['median_step_s'] / ours['median_step_s']:.1f}x")


if __name__ == "__main__":
    main()
