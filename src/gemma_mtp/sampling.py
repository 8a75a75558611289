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

__all__ = ["SamplingParams", "probs_from_logits", "sample", "make_generator"]


def probs_from_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Return float32 probabilities ``[..., V]`` after the filter chain and temperature.

    Greedy params give the one-hot of ``torch.argmax`` (ties go to the lowest index). Ties in the
    sorted filters are also broken toward the lowest index (stable sort), so results do not depend
    on the device.
    """
    logits = logits.float()
    if params.greedy:
        top = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits).scatter_(-1, top, 1.0)

    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # [..., V]
    keep = torch.ones_like(sorted_logits, dtype=torch.bool)
    if 0 < params.top_k < keep.shape[-1]:
        keep[..., params.top_k :] = False
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
    return torch.zeros_like(sorted_probs).scatter_(-1, order, sorted_probs)


def sample(probs: Tensor, generator: torch.Generator | None = None, *, greedy: bool = False) -> Tensor:
    """Draw one token id per row of ``probs [..., V]``; returns a long tensor ``[...]``.

    ``greedy=True`` takes the argmax without touching the generator.
    """
    if greedy:
        return probs.argmax(dim=-1)
    lead = probs.shape[:-1]
    flat = probs.float().reshape(-1, probs.shape[-1])  # multinomial wants 1-D or 2-D input
    ids = torch.multinomial(flat, num_samples=1, generator=generator)
    return ids.reshape(lead)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device``, seeded with ``seed`` or, when None, a fresh random seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
