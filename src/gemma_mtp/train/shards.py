"""Self-distillation data in shards: the target's own continuations of corpus prompts, with the
features a drafter trains on, written once at the runtime's default numerics and streamed by training.

A shard holds `rows` sequences of `seq_len` tokens that share one prompt length (so a batch needs no
padding): `<bos>` + a corpus window as the prompt, then the target's continuation, greedy for most
rows and sampled (temperature `temperature`) for a `sampled_share` of them. Generation records, at
every position, what one teacher-forced pass would give: the final hidden state, the top-k next-token
probabilities (temperature 1; top_ids[..., 0] is the target's greedy token) and, at the end, the KV
of the last KV-owning layer of each attention kind. Positions before `start` are the prompt's (the
target's argmax on corpus text: teacher-forced targets, at no extra cost); from `start` on, the
target's own text, which is what greedy speculation drafts on.

Stored in float16 (hidden, KV, probabilities) and int32 (ids). Shard i depends only on (seed, i)
and the prompt documents, so a run that was stopped skips the shards it finished and makes the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.gemma import GemmaModel
from .data import Features

__all__ = [
    "ShardSpec",
    "generate_rows",
    "shard_prompts",
    "write_shards",
    "read_shard",
    "shard_paths",
    "stream",
]

HEAD_ROWS = 512  # prompt positions per head chunk


@dataclass(frozen=True, kw_only=True)
class ShardSpec:
    rows: int = 16  # sequences per shard (one batched generation)
    seq_len: int = 256
    prompt_min: int = 8
    prompt_max: int = 96
    top_k: int = 8
    sampled_share: float = 0.25  # rows continued by sampling instead of greedy
    temperature: float = 0.7
    seed: int = 0


def shard_prompts(docs: list[list[int]], index: int, spec: ShardSpec) -> tuple[list[list[int]], list[bool]]:
    """Shard `index`'s prompts (one length for all rows) and which rows are sampled."""
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + index)
    hi = min(spec.prompt_max, spec.seq_len)  # seq_len: teacher-forced, no continuation
    length = int(torch.randint(spec.prompt_min, hi + 1, (1,), generator=g))
    prompts = []
    for _ in range(spec.rows):
        doc = docs[int(torch.randint(len(docs), (1,), generator=g))]
        if len(doc) < length:  # a short document: pad the prompt with the document repeated
            doc = doc * (length // max(len(doc), 1) + 1)
        prompts.append(doc[:length])
    sampled = (torch.rand(spec.rows, generator=g) < spec.sampled_share).tolist()
    return prompts, sampled


def _top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(torch.softmax(logits.float(), dim=-1), k=k, dim=-1)
    return top.indices, top.values


@torch.inference_mode()
def generate_rows(
    target: GemmaModel,
    prompts: list[list[int]],
    sampled: list[bool],
    spec: ShardSpec,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Continue equal-length prompts to seq_len tokens; the shard's tensors (see the module doc)."""
    b, t, length = len(prompts), spec.seq_len, len(prompts[0])
    assert all(len(p) == length for p in prompts), "a shard's prompts share one length"
    dev = target.device
    tokens = torch.zeros(b, t, dtype=torch.long)
    tokens[:, :length] = torch.tensor(prompts)
    hidden = torch.zeros(b, t, target.config.hidden_size, dtype=torch.float16)
    top_ids = torch.zeros(b, t, spec.top_k, dtype=torch.int32)
    top_probs = torch.zeros(b, t, spec.top_k, dtype=torch.float16)
    cache = target.make_cache(batch_size=b, max_context=t, max_draft=t)  # slot == position: no ring wrap
    out = target(tokens[:, :length].to(dev), torch.arange(length, device=dev).expand(b, length), cache)
    hidden[:, :length] = out.hidden.cpu().half()
    flat = out.hidden[:, : length - 1].reshape(b * (length - 1), -1)
    ids, probs = [], []
    for s in range(0, flat.shape[0], HEAD_ROWS):
        i, p = _top(target.logits(flat[s : s + HEAD_ROWS]), spec.top_k)
        ids.append(i)
        probs.append(p)
    if ids:
        top_ids[:, : length - 1] = torch.cat(ids).view(b, length - 1, -1).cpu().int()
        top_probs[:, : length - 1] = torch.cat(probs).view(b, length - 1, -1).cpu().half()
    kinds = list(out.shared_kv)
    h = out.hidden[:, -1]
    is_sampled = torch.tensor(sampled)
    for pos in range(length - 1, t):  # h: hidden at pos; record its prediction, feed the next token
        logits = target.logits(h)  # [B, V]
        i, p = _top(logits, spec.top_k)
        top_ids[:, pos] = i.cpu().int()
        top_probs[:, pos] = p.cpu().half()
        hidden[:, pos] = h.cpu().half()
        if pos == t - 1:
            break
        greedy = logits.argmax(dim=-1).cpu()
        if bool(is_sampled.any()):
            drawn = torch.softmax(logits.float() / spec.temperature, dim=-1)
            drawn = torch.multinomial(drawn, 1, generator=generator).squeeze(1).cpu()
            greedy = torch.where(is_sampled, drawn, greedy)
        tokens[:, pos + 1] = greedy
        h = target(greedy[:, None].to(dev), torch.full((b, 1), pos + 1, device=dev), cache).hidden[:, -1]
    shard = {
        "tokens": tokens.int(),
        "start": torch.full((b,), length, dtype=torch.int32),
        "sampled": is_sampled,
        "hidden": hidden,
        "top_ids": top_ids,
        "top_probs": top_probs,
    }
    for kind in kinds:
        layer = target.config.last_kv_owner(kind)
        shard[f"keys.{kind}"] = cache.keys[layer][:, :, :t].cpu().half()
        shard[f"values.{kind}"] = cache.values[layer][:, :, :t].cpu().half()
    for name in ("hidden", *(k for k in shard if k.startswith(("keys.", "values.")))):
        if not bool(torch.isfinite(shard[name]).all()):
            raise ValueError(f"{name} overflows float16; store this target's features in bfloat16")
    return shard


def shard_paths(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("shard-*.pt"))


def write_shards(
    target: GemmaModel,
    docs: list[list[int]],
    out_dir: str | Path,
    n_shards: int,
    spec: ShardSpec,
    *,
    progress: bool = True,
) -> list[Path]:
    """Shards 0..n_shards-1 of `spec` in out_dir; those already there are skipped (resumable)."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"shard-{i:05d}.pt" for i in range(n_shards)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    bar = tqdm(
        total=n_shards * spec.rows * spec.seq_len,
        initial=(n_shards - len(todo)) * spec.rows * spec.seq_len,
        unit="tok",
        unit_scale=True,
        desc=out.name,
        disable=not progress,
    )
    for i in todo:
        prompts, sampled = shard_prompts(docs, i, spec)
        generator = torch.Generator(device=target.device).manual_seed(spec.seed * 1_000_003 + i)
        shard = generate_rows(target, prompts, sampled, spec, generator)
        shard["spec"] = spec.__dict__
        tmp = paths[i].with_name(paths[i].name + ".tmp")
        torch.save(shard, tmp)
        os.replace(tmp, paths[i])
        bar.update(spec.rows * spec.seq_len)
    bar.close()
    return paths


def read_shard(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Features, torch.Tensor]:
    """(features, start [N]): the shard as training `Features` (floats in `dtype`)."""
    s = torch.load(path, map_location="cpu", weights_only=True)
    kinds = [k.removeprefix("keys.") for k in s if k.startswith("keys.")]
    features = Features(
        tokens=s["tokens"].long(),
        hidden=s["hidden"].to(dtype),
        keys={k: s[f"keys.{k}"].to(dtype) for k in kinds},
        values={k: s[f"values.{k}"].to(dtype) for k in kinds},
        top_ids=s["top_ids"].long(),
        top_probs=s["top_probs"].float(),
    )
    return features, s["start"].long()


def stream(
    paths: list[Path], batch_size: int, *, seed: int, step: int = 0, window: int = 4
) -> Iterator[Features]:
    """Endless batches of `batch_size` rows drawn from `window` shards at a time (shards in a seeded
    order per epoch, rows shuffled within the window); deterministic in (seed, step), so a resumed
    run skips the batches an uninterrupted one would have drawn before `step`."""
    if not paths:
        raise ValueError("no shards to train on")
    epoch, done = 0, 0
    while True:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for w in range(0, len(paths), window):
            group = [paths[i] for i in order[w : w + window].tolist()]
            feats = Features.cat([read_shard(p)[0] for p in group])
            n_rows = len(feats)
            perm = torch.randperm(
                n_rows, generator=torch.Generator().manual_seed(seed * 104729 + epoch * 31 + w)
            )
            for b in range(0, n_rows - batch_size + 1, batch_size):
                if done >= step:
                    yield feats.rows(perm[b : b + batch_size])
                done += 1
        epoch += 1
