"""Training data for a drafter, all of it made by the target.

1. Prompts: random prefixes of corpus documents (a document of just `<bos>` when there is no corpus).
2. Sequences: each prompt continued by the target: a few tokens sampled at temperature 1 (so that
   one prompt gives many different texts), then greedy, which is what greedy speculation drafts.
3. Features, from one teacher-forced target pass over each sequence: the final hidden state at every
   position, the KV of the last KV-owning layer of each attention kind (what the assistant reads),
   and the target's top-k next-token probabilities (position t: the distribution of token t + 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.gemma import GemmaModel
from ..rows import pack_rows

__all__ = [
    "Features",
    "read_corpus",
    "make_prompts",
    "generate_sequences",
    "target_features",
    "build_features",
]

LOGIT_ROWS = 2048  # positions per chunk when turning hidden states into top-k probabilities


@dataclass
class Features:
    tokens: torch.Tensor  # [N, T] long
    hidden: torch.Tensor  # [N, T, D] target final (normed) hidden state
    keys: dict[str, torch.Tensor]  # kind -> [N, kv_heads, T, head_dim] (after norm and RoPE)
    values: dict[str, torch.Tensor]  # kind -> [N, kv_heads, T, head_dim]
    top_ids: torch.Tensor  # [N, T, K] long: the target's most likely next tokens, best first
    top_probs: torch.Tensor  # [N, T, K] float32

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index: torch.Tensor, device: torch.device | str | None = None) -> Features:
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[index.to(t.device)].to(device) if device is not None else t[index.to(t.device)]

        return Features(
            tokens=pick(self.tokens),
            hidden=pick(self.hidden),
            keys={k: pick(v) for k, v in self.keys.items()},
            values={k: pick(v) for k, v in self.values.items()},
            top_ids=pick(self.top_ids),
            top_probs=pick(self.top_probs),
        )

    def to(self, device: torch.device | str) -> Features:
        return self.rows(torch.arange(len(self)), device)

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        return Features(
            tokens=torch.cat([p.tokens for p in parts]),
            hidden=torch.cat([p.hidden for p in parts]),
            keys={k: torch.cat([p.keys[k] for p in parts]) for k in parts[0].keys},
            values={k: torch.cat([p.values[k] for p in parts]) for k in parts[0].values},
            top_ids=torch.cat([p.top_ids for p in parts]),
            top_probs=torch.cat([p.top_probs for p in parts]),
        )

    def state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_corpus(paths: list[str | Path], tokenizer=None) -> list[list[int]]:
    """Documents as token ids. `.jsonl`: one document per line, a list of ids or {"text": ...} /
    {"ids": [...]}; any other file is one text document. Text needs the target's tokenizer."""
    docs: list[list[int]] = []

    def encode(text: str, source: Path) -> list[int]:
        if tokenizer is None:
            raise UsageError(f"{source}: text needs a tokenizer, and the target has none; use token-id JSONL")
        return tokenizer.encode(text)

    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"--corpus {path}: no such file")
        if path.suffix != ".jsonl":
            docs.append(encode(path.read_text(encoding="utf-8"), path))
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if isinstance(item, dict) and "text" in item:
                docs.append(encode(str(item["text"]), path))
            elif isinstance(item, dict) and "ids" in item:
                docs.append([int(i) for i in item["ids"]])
            elif isinstance(item, list):
                docs.append([int(i) for i in item])
            else:
                raise UsageError(
                    f'{path}:{n}: expected a list of token ids, {{"text": ...}} or {{"ids": [...]}}'
                )
    return [d for d in docs if d]


def make_prompts(
    docs: list[list[int]], n: int, *, prompt_min: int, prompt_max: int, generator: torch.Generator
) -> list[list[int]]:
    """n prompts: a random document's prefix, its length drawn from [prompt_min, prompt_max]."""
    out = []
    for _ in range(n):
        doc = docs[int(torch.randint(len(docs), (1,), generator=generator))]
        hi = min(prompt_max, len(doc))
        lo = min(prompt_min, hi)
        length = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        out.append(doc[:length])
    return out


@torch.inference_mode()
def generate_sequences(
    target: GemmaModel,
    prompts: list[list[int]],
    n_sampled: list[int],
    seq_len: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Continue each prompt to seq_len tokens: n_sampled[b] tokens drawn at temperature 1, then greedy.

    Rows are left-padded (position -1 is padding) so that every row decodes at its own position.
    """
    dev = target.device
    batch = len(prompts)
    prompts = [p[:seq_len] for p in prompts]
    tokens, positions = pack_rows(prompts, [0] * batch, left=True)
    out = torch.zeros(batch, seq_len, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in prompts])
    for b, p in enumerate(prompts):
        out[b, : len(p)] = torch.tensor(p)
    cache = target.make_cache(batch_size=batch, max_context=seq_len, max_draft=0)
    hidden = target(tokens, positions, cache).hidden[:, -1]
    sampled = torch.tensor(n_sampled)
    steps = seq_len - int(lengths.min())
    for _ in range(steps):
        logits = target.logits(hidden)  # [B, V]
        greedy = logits.argmax(dim=-1).cpu()
        drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1).cpu()
        generated = lengths - torch.tensor([len(p) for p in prompts])
        nxt = torch.where(generated < sampled, drawn, greedy)
        live = lengths < seq_len
        rows = torch.nonzero(live).squeeze(1)
        out[rows, lengths[rows]] = nxt[rows]
        if not bool((lengths[live] + 1 < seq_len).any()):
            break
        pos = torch.where(live & (lengths + 1 < seq_len), lengths, torch.tensor(-1))
        lengths = torch.where(live, lengths + 1, lengths)
        hidden = target(nxt[:, None].to(dev), pos[:, None].to(dev), cache).hidden[:, -1]
    return out


@torch.inference_mode()
def target_features(target: GemmaModel, tokens: torch.Tensor, top_k: int) -> Features:
    """One teacher-forced pass over tokens [N, T] (every row starts at position 0)."""
    n, t = tokens.shape
    dev = target.device
    cache = target.make_cache(batch_size=n, max_context=t, max_draft=t)  # a ring as long as the row
    positions = torch.arange(t, device=dev).expand(n, t)
    out = target(tokens.to(dev), positions, cache)
    keys, values = {}, {}
    for kind in out.shared_kv:
        layer = target.config.last_kv_owner(kind)
        keys[kind] = cache.keys[layer][:, :, :t].clone()  # slot == position: nothing wrapped
        values[kind] = cache.values[layer][:, :, :t].clone()
    flat = out.hidden.reshape(n * t, -1)
    ids, probs = [], []
    for start in range(0, n * t, LOGIT_ROWS):
        p = torch.softmax(target.logits(flat[start : start + LOGIT_ROWS]), dim=-1)
        top = torch.topk(p, k=min(top_k, p.shape[-1]), dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    k = ids[0].shape[-1]
    return Features(
        tokens=tokens.cpu(),
        hidden=out.hidden,
        keys=keys,
        values=values,
        top_ids=torch.cat(ids).view(n, t, k),
        top_probs=torch.cat(probs).view(n, t, k).float(),
    )


def build_features(
    target: GemmaModel,
    docs: list[list[int]],
    n_sequences: int,
    *,
    seq_len: int,
    prompt_min: int,
    prompt_max: int,
    sample_max: int,
    top_k: int,
    gen_batch: int,
    seed: int,
    progress=None,
) -> Features:
    """n_sequences rows of seq_len tokens and their target features, deterministic in `seed`."""
    generator = torch.Generator().manual_seed(seed)
    device_gen = torch.Generator(device=target.device).manual_seed(seed)
    parts = []
    for start in range(0, n_sequences, gen_batch):
        rows = min(gen_batch, n_sequences - start)
        prompts = make_prompts(docs, rows, prompt_min=prompt_min, prompt_max=prompt_max, generator=generator)
        n_sampled = torch.randint(0, sample_max + 1, (rows,), generator=generator).tolist()
        tokens = generate_sequences(target, prompts, n_sampled, seq_len, device_gen)
        parts.append(target_features(target, tokens, top_k))
        if progress is not None:
            progress(rows)
    return Features.cat(parts)
