"""The training objective: unroll the drafting the runtime does, at every position of a sequence at once.

For a query position p (the pending token at p, the target's cache holding 0..p-1), draft step s
feeds concat(target.embed(token at p+s-1), state) at position p, where state is the target's hidden
state at p-1 for s = 1 and post_projection(previous step's output) after; it attends to the target's
KV at positions < p (sliding layers: the last window + 1 of them), and must predict the target's
token at p+s, i.e. the target's next-token distribution at position p+s-1. The tokens fed are the
sequence's own: in the runtime a draft after a wrong one is rejected anyway.

Loss per step: cross-entropy of the dense head (x . embedding) against the target's top-k
probabilities, or, with a centroid head, optionally of a softmax over a few clusters' tokens only
(`train.candidates`, the tokens the runtime scores), plus, with a centroid head, cross-entropy of the
centroid logits against the target's probability mass per cluster. Predictions for acceptance use the runtime's rule (candidates of the
top clusters only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import SLIDING
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from .candidates import ClusterTable, cluster_token_loss
from .data import Features

__all__ = ["unroll", "draft_loss", "predict", "acceptance", "LossParts"]

HEAD_ROWS = 4096  # positions per chunk of the dense head (its logits are recomputed in backward)


@dataclass
class LossParts:
    total: torch.Tensor
    token: list[torch.Tensor]  # per draft step, detached (reading them waits for the device)
    cluster: list[torch.Tensor]


def _sequence_kv(batch: Features, assistant: AssistantModel, n_queries: int, dtype: torch.dtype) -> dict:
    """(keys, values, mask) per kind: a query at p sees KV positions < p (sliding: >= p - window - 1)."""
    t = batch.tokens.shape[1]
    dev = batch.hidden.device
    kv_pos = torch.arange(t, device=dev)[None, :]
    q_pos = torch.arange(1, n_queries + 1, device=dev)[:, None]
    causal = kv_pos < q_pos  # [Tq, T]
    window = assistant.config.text.sliding_window
    shared = {}
    for kind in batch.keys:
        mask = causal & (kv_pos >= q_pos - window - 1) if kind == SLIDING else causal
        shared[kind] = (batch.keys[kind].to(dtype), batch.values[kind].to(dtype), mask[None, None])
    return shared


def _body(
    assistant: AssistantModel, inputs: torch.Tensor, positions: torch.Tensor, shared: dict
) -> torch.Tensor:
    """AssistantModel.forward up to the final norm (the head is applied by the loss, in chunks)."""
    x = assistant.pre_projection(inputs)
    tables = {}
    for layer in assistant.model.layers:
        key = GemmaModel._rope_key(layer.spec)
        if key not in tables:
            tables[key] = assistant.model.rotary[key](positions, x.dtype)
        x = layer(x, None, *tables[key], None, None, shared)
    return assistant.model.norm(x)


def unroll(
    assistant: AssistantModel, target: GemmaModel, batch: Features, steps: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    """Normed assistant states [B, T - steps, width] per draft step, query positions 1..T-steps."""
    b, t = batch.tokens.shape
    n = t - steps
    dev = batch.hidden.device
    positions = torch.arange(1, n + 1, device=dev).expand(b, n)
    shared = _sequence_kv(batch, assistant, n, dtype)
    tokens = batch.tokens.to(dev)
    state = batch.hidden[:, :n].to(dtype)
    out = []
    for s in range(1, steps + 1):
        embedded = target.embed(tokens[:, s : s + n]).to(dtype)
        x = _body(assistant, torch.cat([embedded, state], dim=-1), positions, shared)
        out.append(x)
        state = assistant.post_projection(x).to(dtype)
    return out


def _soft_ce(x: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    logits = (x @ table.to(x.dtype).T).float()
    picked = logits.gather(1, ids) - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(probs * picked).sum()


def _token_loss(x: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the dense head's cross-entropy against renormalised top-k probabilities;
    chunked and recomputed in backward, so no [rows, vocab] tensor outlives its chunk."""
    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, x.shape[0], HEAD_ROWS):
        part = slice(start, start + HEAD_ROWS)
        args = (x[part], table, ids[part], probs[part])
        total = total + (
            checkpoint(_soft_ce, *args, use_reentrant=False) if x.requires_grad else _soft_ce(*args)
        )
    return total


def draft_loss(
    assistant: AssistantModel,
    target: GemmaModel,
    batch: Features,
    *,
    steps: int,
    step_decay: float,
    cluster_weight: float,
    cluster: torch.Tensor | None,
    dtype: torch.dtype,
    token_loss: str = "full",
) -> LossParts:
    """Mean over positions of the weighted per-step losses. `cluster`: [V] cluster of every token.
    `token_loss`: "full" (the dense head) or "clusters" (a centroid head's candidates only, see
    `train.candidates`)."""
    states = unroll(assistant, target, batch, steps, dtype)
    n = states[0].shape[1]
    table = assistant.model.embed_tokens.weight
    head = assistant.masked_embedding
    if token_loss == "clusters" and head is None:
        raise ValueError("token_loss='clusters' needs a drafter with a centroid head")
    flats = [x.reshape(-1, x.shape[-1]) for x in states]
    rows = flats[0].shape[0]
    ids, probs = [], []
    for s in range(1, steps + 1):
        ids.append(batch.top_ids[:, s : s + n].reshape(rows, -1).to(flats[0].device))
        p = batch.top_probs[:, s : s + n].reshape(rows, -1).to(flats[0].device)
        probs.append(p / p.sum(dim=-1, keepdim=True))
    centroid_logits = [head.centroids(flat) for flat in flats] if head is not None else []
    if token_loss == "clusters":
        # all steps' positions in one pass: one grouped table and fuller tiles
        count = min(head.num_centroids, ids[0].shape[1] + head.top_k)
        per_row = cluster_token_loss(
            torch.cat(flats),
            ClusterTable(head, table),
            torch.cat(centroid_logits),
            torch.cat(ids),
            torch.cat(probs),
            count,
        )
        tokens = list(per_row.view(steps, rows).mean(dim=1).unbind())
    else:
        tokens = [_token_loss(flat, table, i, p) / rows for flat, i, p in zip(flats, ids, probs, strict=True)]
    total = table.new_zeros((), dtype=torch.float32)
    token_parts, cluster_parts = [], []
    for s in range(1, steps + 1):
        loss = tokens[s - 1]
        token_parts.append(loss.detach())
        if head is not None and cluster is not None:
            mass = torch.zeros(rows, head.num_centroids, device=flats[0].device)
            mass.scatter_add_(1, cluster[ids[s - 1]], probs[s - 1])
            logp = F.log_softmax(centroid_logits[s - 1].float(), dim=-1)
            c_loss = -(mass * logp).sum() / rows
            loss = loss + cluster_weight * c_loss
            cluster_parts.append(c_loss.detach())
        total = total + step_decay ** (s - 1) * loss
    return LossParts(total=total, token=token_parts, cluster=cluster_parts)


@torch.no_grad()
def predict(assistant: AssistantModel, x: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """Greedy draft tokens [N] for normed states x [N, width], by the runtime's head rule."""
    table = assistant.model.embed_tokens.weight
    head = assistant.masked_embedding
    out = []
    for start in range(0, x.shape[0], rows):
        part = x[start : start + rows].to(table.dtype)
        if head is None:
            out.append((part @ table.T).argmax(dim=-1))
        else:
            ids, cand = head.candidates(part, table)
            out.append(ids.gather(1, cand.argmax(dim=-1, keepdim=True)).squeeze(1))
    return torch.cat(out)


@torch.no_grad()
def acceptance(
    assistant: AssistantModel,
    target: GemmaModel,
    data: Features,
    *,
    steps: int,
    dtype: torch.dtype,
    batch: int = 8,
    first: torch.Tensor | None = None,
) -> dict:
    """Greedy acceptance on `data` when drafting `steps` tokens at every position: the share of
    rounds whose first i drafts all match the target's greedy tokens (`by_position`, cumulative as
    the runtime accepts them), and the mean accepted length 1 + E[matching prefix] for n_max =
    1..steps. `first` [N]: count only rounds whose pending token is at position >= first - 1 (the
    target's own continuation of a prompt of `first` tokens, as a generation drafts them)."""
    hits = torch.zeros(steps)
    count = 0
    for start in range(0, len(data), batch):
        index = torch.arange(start, min(start + batch, len(data)))
        part = data.rows(index)
        states = unroll(assistant, target, part, steps, dtype)
        n = states[0].shape[1]
        keep = torch.ones(len(index), n, dtype=torch.bool)
        if first is not None:  # query position p = j + 1 for state j
            keep = torch.arange(1, n + 1)[None, :] >= (first[index] - 1)[:, None]
        keep = keep.reshape(-1)
        ok = None
        for s, x in enumerate(states, 1):
            pred = predict(assistant, x.reshape(-1, x.shape[-1]).float())
            right = pred.cpu() == part.top_ids[:, s : s + n, 0].reshape(-1).cpu()
            ok = right if ok is None else ok & right
            hits[s - 1] += (ok & keep).sum()
        count += int(keep.sum())
    by_position = (hits / max(count, 1)).tolist()
    mean_len = [1 + sum(by_position[:i]) for i in range(1, steps + 1)]
    return {"by_position": by_position, "mean_accepted_length": mean_len}
