"""The drafting interface every strategy implements, and the per-request speculative options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ..sampling import SamplingParams, probs_from_logits, sample
from .options import MAX_DRAFT, SPEC_ALIASES, SPEC_CHOICES, SPEC_TYPES, SpecOptions, canonical_spec_type

__all__ = [
    "SPEC_TYPES",
    "SPEC_ALIASES",
    "SPEC_CHOICES",
    "MAX_DRAFT",
    "canonical_spec_type",
    "SpecOptions",
    "Draft",
    "DraftRequest",
    "Drafter",
    "DraftCollector",
    "choose_token",
    "greedy_from_candidates",
]


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    q: torch.Tensor | None  # [n, V] distributions the tokens were drawn from; None = deterministic


@dataclass
class DraftRequest:
    """What a drafter may look at for one row of the batch in one round."""

    row: int
    tokens: list[int]  # prompt + output so far; the last one is pending (not yet in the target cache)
    n_max: int
    sampling: SamplingParams
    options: SpecOptions
    generator: torch.Generator | None


class Drafter(Protocol):
    name: str

    def propose(self, requests: list[DraftRequest], hidden: torch.Tensor) -> dict[int, Draft]:
        """Drafts for each request's row. `hidden` [B, 1, D]: the target's last hidden state per
        row (at the position before the pending token)."""
        ...

    def reset_row(self, row: int) -> None: ...


def choose_token(logits: torch.Tensor, request: DraftRequest) -> tuple[int, torch.Tensor | None, float]:
    """Pick a draft token from drafter logits [V] under the request's sampling transform.

    Returns (token, q or None when greedy, the token's probability for p_min). Greedy drafting is
    deterministic, so its q is one-hot (None); p_min then reads the drafter's softmax.
    """
    if request.sampling.greedy:
        token = int(logits.argmax())
        p = float(torch.softmax(logits.float(), dim=-1)[token]) if request.options.p_min > 0 else 1.0
        return token, None, p
    q = probs_from_logits(logits, request.sampling)
    token = int(sample(q, request.generator))
    return token, q, float(q[token])


def greedy_from_candidates(
    ids: torch.Tensor, cand: torch.Tensor, vocab_size: int, p_min: float
) -> tuple[int, float] | None:
    """The greedy `choose_token` of a centroid head's logits without building them.

    The full logits [V] hold the candidates' float32 logits `cand` [n] at token ids `ids` [n] (all
    distinct) and `cand.min() - 1` everywhere else, so their argmax is the smallest id among the
    maximal candidates (full `argmax` returns the first maximum). For p_min > 0 the token's softmax
    probability is 1 / (sum(exp(cand - max)) + (V - n) * exp(filler - max)), taken here in float64;
    the full-logit float32 softmax may differ from it by its summation error (at most about V float32
    ulps), so within that of p_min this returns None and the caller decides on the full logits, which
    keeps every stop decision the full-logit path makes. None too where the filler is not below the
    maximum (NaN or infinite logits, or equal ones so large that min - 1 rounds to min).
    """
    top = cand.max()
    mx = float(top)
    filler = float(cand.min() - 1.0)  # the float32 value the full logits hold, as the head makes it
    if not (filler < mx and math.isfinite(mx)):
        return None
    token = int(torch.where(cand == top, ids, vocab_size).min())
    if p_min <= 0:
        return token, 1.0
    c = cand.double()
    rest = (vocab_size - cand.numel()) * math.exp(filler - mx)
    p = 1.0 / (float(torch.exp(c - mx).sum()) + rest)
    if abs(p - p_min) <= (vocab_size + 8) * 2.0**-23 * p_min:
        return None
    return token, p


class DraftCollector:
    """Per-row bookkeeping of an autoregressive drafting loop: which rows still draft, their tokens
    and distributions. `offer` takes one step's logits for a row and returns the drafted token, or
    None when the row stopped (its probability fell below p_min); `active` empties when all stop."""

    def __init__(self, requests: list[DraftRequest]) -> None:
        self.tokens: dict[int, list[int]] = {r.row: [] for r in requests}
        self.qs: dict[int, list[torch.Tensor]] = {r.row: [] for r in requests}
        self.active: dict[int, DraftRequest] = {r.row: r for r in requests if r.n_max > 0}

    def offer(self, row: int, logits: torch.Tensor) -> int | None:
        return self.offer_choice(row, *choose_token(logits, self.active[row]))

    def offer_choice(self, row: int, token: int, q: torch.Tensor | None, p: float) -> int | None:
        """`offer` for a token already chosen (e.g. by `greedy_from_candidates`): q its distribution
        (None when greedy), p its probability for the p_min test."""
        r = self.active[row]
        if p < r.options.p_min:
            del self.active[row]
            return None
        self.tokens[row].append(token)
        if q is not None:
            self.qs[row].append(q)
        if len(self.tokens[row]) >= r.n_max:
            del self.active[row]
        return token

    def drafts(self) -> dict[int, Draft]:
        return {
            row: Draft(t, torch.stack(self.qs[row]) if self.qs[row] else None)
            for row, t in self.tokens.items()
        }
