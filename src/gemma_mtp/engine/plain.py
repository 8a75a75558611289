"""Plain (non-speculative) decoding: one target forward per token, as plain functions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ..cache import KVCache
from ..models.gemma import GemmaModel
from ..sampling import SamplingParams, probs_from_logits, sample
from .results import Result, Step, Timings

__all__ = ["decode_plain"]


@torch.inference_mode()
def decode_plain(
    target: GemmaModel,
    cache: KVCache,
    prompt_ids: list[int],
    *,
    n_predict: int,
    sampling: SamplingParams,
    stop_ids: frozenset[int],
    generator: torch.Generator | None,
    result: Result,
) -> Iterator[Step]:
    """Prefill `prompt_ids` into an empty row-0 cache, then sample until a stop id, `n_predict`
    tokens (-1: no limit) or the end of the cache. Fills `result` as it goes; yields each token."""
    device = target.device
    limit = cache.max_context - len(prompt_ids)
    budget = limit if n_predict < 0 else min(n_predict, limit)
    t0 = time.perf_counter()
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    positions = torch.arange(len(prompt_ids), device=device)[None]
    hidden = target(tokens, positions, cache).hidden[:, -1:]
    t_prompt = time.perf_counter()
    decode_s = 0.0
    result.stop_reason = "length" if n_predict >= 0 and n_predict <= limit else "context"
    token: int | None = None
    for i in range(budget):
        if token is not None:  # feed the previous token: one forward per generated token
            t_step = time.perf_counter()
            pos = torch.tensor([[len(prompt_ids) + i - 1]], device=device)
            hidden = target(torch.tensor([[token]], device=device), pos, cache).hidden
        probs = probs_from_logits(target.logits(hidden)[:, -1], sampling)
        token = int(sample(probs, generator, greedy=sampling.greedy)[0])
        if i == 0:
            t_prompt = time.perf_counter()
        else:
            decode_s += time.perf_counter() - t_step
        result.token_ids.append(token)
        result.n_generated += 1
        yield Step(token_ids=[token])
        if token in stop_ids:
            result.stop_reason = "eos"
            break
    result.timings = Timings(
        load_s=result.timings.load_s,
        prompt_ms=(t_prompt - t0) * 1e3,
        decode_ms=decode_s * 1e3,
        decode_tokens_per_s=(result.n_generated - 1) / decode_s if decode_s > 0 else 0.0,
    )
