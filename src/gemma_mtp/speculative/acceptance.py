"""Acceptance rules for speculative decoding: small pure functions on tensors.

Both rules return (n_accepted, next_token): the first `n_accepted` drafts are kept and `next_token`
follows them (the target's correction at the first rejected position, or the bonus token after the
last draft). Either way the committed tokens are distributed exactly as the target alone would
sample them (Leviathan et al. 2023, Chen et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops import argmax_rows
from ..sampling import sample

__all__ = ["accept_greedy", "accept_greedy_ids", "accept_sampled"]


def accept_greedy(p_target: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """p_target: [n+1, V] scores (probabilities or logits); accept while the draft is the argmax."""
    return accept_greedy_ids(argmax_rows(p_target), drafts)


def accept_greedy_ids(best: Sequence[int], drafts: list[int]) -> tuple[int, int]:
    """best: the target's argmax at each of the n+1 verified positions (what `accept_greedy` takes
    from the scores, e.g. `GemmaModel.argmax`); accept while the draft is the argmax."""
    for i, token in enumerate(drafts):
        if token != best[i]:
            return i, best[i]
    return len(drafts), best[len(drafts)]


def accept_sampled(
    p_target: torch.Tensor,
    q_draft: torch.Tensor | None,
    drafts: list[int],
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """Rejection sampling. p_target: [n+1, V] target probabilities; q_draft: [n, V] the
    distributions the drafts were drawn from, or None for a deterministic drafter (one-hot q).

    Draft i is kept with probability min(1, p_i(d) / q_i(d)); at the first rejection the next token
    is drawn from normalize(max(0, p_i - q_i)); if every draft is kept it is drawn from p_{n}.
    """
    n = len(drafts)
    if n:
        idx = torch.arange(n, device=p_target.device)
        d = torch.tensor(drafts, device=p_target.device)
        p_d = p_target[idx, d]
        q_d = q_draft[idx, d] if q_draft is not None else torch.ones_like(p_d)
        u = torch.rand(n, generator=generator, device=p_target.device)
        rejected = (u * q_d >= p_d).nonzero()  # u < p/q, written without dividing by q
        if len(rejected):
            i = int(rejected[0])
            q_i = q_draft[i] if q_draft is not None else torch.nn.functional.one_hot(d[i], p_target.shape[-1])
            residual = (p_target[i] - q_i.to(p_target.dtype)).clamp(min=0)
            total = residual.sum()
            # p == q leaves no residual mass; rejection then has probability 0, so p_i is exact
            dist = residual / total if float(total) > 0 else p_target[i]
            return i, int(sample(dist, generator))
    return n, int(sample(p_target[n], generator))
