"""Samplers that return the exact distribution a token is drawn from.

The filter chain follows llama.cpp's default order: top-k, top-p, min-p, then temperature. The
filters look at probabilities at temperature 1 (as llama.cpp's do, since its temperature sampler
runs last); temperature only reshapes the surviving tokens. Speculative acceptance calls
``probs_from_logits`` with the same params for the target and the drafter, so the rejection rule
reproduces exactly what plain sampling would draw.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gemma_mtp.sampling_params import SamplingParams
from gemma_mtp.threads import single_thread

__all__ = ["SamplingParams", "probs_from_logits", "sample", "make_generator"]


def probs_from_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Return float32 probabilities ``[..., V]`` after the filter chain and temperature.

    Greedy params give the one-hot of ``torch.argmax`` (ties go to the lowest index). Ties in the
    sorted filters are also broken toward the lowest index (stable sort), so results do not depend
    on the device. On the CPU it runs on the calling thread: a few passes over one vocabulary are
    memory-bound, and with two threads on a loaded 2-core machine they took 32 ms instead of 1.4.
    """
    if logits.is_cpu:
        with single_thread():
            return _probs(logits, params)
    return _probs(logits, params)


def _probs(logits: Tensor, params: SamplingParams) -> Tensor:
    logits = logits.float()
    if params.greedy:
        top = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, top, 1.0)

    if 0 < params.top_k < logits.shape[-1]:
        sorted_logits, order = _top_k_sorted(logits, params.top_k)  # [..., k]
    else:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # [..., V]
    keep = torch.ones_like(sorted_logits, dtype=torch.bool)
    if params.top_p < 1.0:
        p = torch.softmax(sorted_logits.masked_fill(~keep, -math.inf), dim=-1)
        cum = torch.cumsum(p, dim=-1)
        cum_before = torch.nn.functional.pad(cum[..., :-1], (1, 0))  # mass strictly above each token
        keep &= cum_before < params.top_p
        keep[..., 0] = True  # always keep at least the most likely token
    if params.min_p > 0.0:
        # p_i / p_max == exp(l_i - l_max): no renormalization needed
        ratio = torch.exp(sorted_logits - sorted_logits[..., :1])
        keep &= ratio >= params.min_p

    scaled = (sorted_logits / params.temperature).masked_fill(~keep, -math.inf)
    sorted_probs = torch.softmax(scaled, dim=-1)
    return torch.zeros_like(logits).scatter_(-1, order, sorted_probs)


def _top_k_sorted(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` entries of a stable descending sort of ``logits [..., V]`` (values, indices),
    without sorting all V: every entry at or above the k-th largest value is a candidate (ties at the
    boundary included), candidates are taken in index order and stable-sorted among themselves, which
    puts exactly the full sort's first k first (a 262,144-word sort cost ~20 ms a token here)."""
    flat = logits.reshape(-1, logits.shape[-1])
    kth = torch.topk(flat, k, dim=-1, sorted=False).values.min(dim=-1).values
    values, indices = [], []
    for row, threshold in zip(flat, kth, strict=True):
        candidates = torch.nonzero(row >= threshold).squeeze(-1)  # ascending indices
        top, at = torch.sort(row[candidates], descending=True, stable=True)
        values.append(top[:k])
        indices.append(candidates[at[:k]])
    lead = logits.shape[:-1]
    return torch.stack(values).reshape(*lead, k), torch.stack(indices).reshape(*lead, k)


def sample(probs: Tensor, generator: torch.Generator | None = None, *, greedy: bool = False) -> Tensor:
    """Draw one token id per row of ``probs [..., V]``; returns a long tensor ``[...]``.

    ``greedy=True`` takes the argmax without touching the generator.
    """
    if greedy:
        return probs.argmax(dim=-1)
    lead = probs.shape[:-1]
    flat = probs.float().reshape(-1, probs.shape[-1])  # multinomial wants 1-D or 2-D input
    if not flat.is_cpu:
        return torch.multinomial(flat, num_samples=1, generator=generator).reshape(lead)
    # On the CPU: draw among each row's nonzero entries only (after top-k, tens of the 262,144), on
    # the calling thread; a multinomial over the whole vocabulary took 7-30 ms a token here.
    with single_thread():
        ids = [_draw(row, generator) for row in flat]
    return torch.stack(ids).reshape(lead)


def _draw(row: Tensor, generator: torch.Generator | None) -> Tensor:
    support = torch.nonzero(row).squeeze(-1)
    if support.numel() == 0:  # as torch.multinomial would
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return support[torch.multinomial(row[support], num_samples=1, generator=generator)[0]]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device``, seeded with ``seed`` or, when None, a fresh random seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
