"""Synthetic acceptance, for benchmarking only: llama.cpp's ``--spec-synth-rates P0,P1,...``.

The drafter drafts and the target verifies as always; only the accept decision is imposed. Draft i
of a round is kept with conditional probability P_i / P_{i-1} (P_{-1} = 1), so that P_i is the
unconditional probability that the first i + 1 drafts of a round are all kept, whatever the models
compute. At the first refused position, and after the last draft, the committed token is the
target's own choice there (argmax, or a sample of its distribution), as in llama.cpp's
`server_sample_and_accept_synth` (tools/server/server-context.cpp): a drafted end-of-generation
token is never kept (it would end the generation early). Rates follow
`common_speculative_synth_rates_resolve` (common/speculative.cpp): finite, in [0, 1],
non-increasing; ``--spec-synth-len L`` is `from_length`.

The text such a run produces is not the model's output: every result of it says so
(``speculative.synthetic_acceptance`` with the rates and ``speculative.text_valid: false``).
Only the API reaches it (`SpecOptions(synthetic=SyntheticAcceptance(...))`); no flag of `run`,
`chat` or `serve` sets it, and the server refuses it in a request.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..ops import argmax_rows
from ..sampling import SamplingParams, probs_from_logits, sample

__all__ = ["SyntheticAcceptance", "SyntheticAcceptor", "from_length"]


@dataclass(frozen=True, kw_only=True)
class SyntheticAcceptance:
    """Imposed acceptance: `rates[i]` = P(drafts 0..i of a round are all kept). A round that drafts
    more tokens than there are rates keeps none past the last rate. `seed`: the decisions' RNG."""

    rates: tuple[float, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        rates = tuple(float(r) for r in self.rates)
        object.__setattr__(self, "rates", rates)
        if not rates:
            raise UsageError("synthetic acceptance needs at least one rate (one per draft position)")
        for i, r in enumerate(rates):
            if not math.isfinite(r) or not 0.0 <= r <= 1.0:
                raise UsageError(
                    f"synthetic acceptance rate {r} at position {i} must be finite and within [0, 1]"
                )
            if i and r > rates[i - 1]:
                raise UsageError(
                    f"synthetic acceptance rates must be non-increasing; {r} at position {i} > {rates[i - 1]}"
                )

    @property
    def conditional(self) -> tuple[float, ...]:
        """P(keep draft i | drafts 0..i-1 kept) = P_i / P_{i-1}; 0 after a rate of 0."""
        prev, out = 1.0, []
        for r in self.rates:
            out.append(r / prev if prev > 0 else 0.0)
            prev = r
        return tuple(out)

    @property
    def mean_length(self) -> float:
        """Expected tokens committed per round at n_max = len(rates): 1 + sum of the rates."""
        return 1.0 + sum(self.rates)


def from_length(length: float, n_max: int, *, seed: int = 0) -> SyntheticAcceptance:
    """llama.cpp's ``--spec-synth-len L``: geometric rates p, p^2, ... whose mean acceptance
    length (target token included) at `n_max` drafts is L."""
    if n_max <= 0:
        raise UsageError("synthetic acceptance needs at least one speculative token (n_max >= 1)")
    if not math.isfinite(length) or not 1.0 <= length <= n_max + 1:
        raise UsageError(f"synthetic acceptance length {length} must be within [1, {n_max + 1}]")
    if length == n_max + 1:
        p = 1.0
    elif length == 1.0:
        p = 0.0
    else:
        lo, hi = 0.0, 1.0  # sum_{j=1..n} p^j is increasing in p: bisect, as llama.cpp does
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if sum(mid**j for j in range(1, n_max + 1)) < length - 1.0:
                lo = mid
            else:
                hi = mid
        p = 0.5 * (lo + hi)
    return SyntheticAcceptance(rates=tuple(p**j for j in range(1, n_max + 1)), seed=seed)


class SyntheticAcceptor:
    """One request's accept decisions (its own seeded RNG, so runs repeat)."""

    def __init__(self, spec: SyntheticAcceptance) -> None:
        self.spec = spec
        self.conditional = spec.conditional
        self.rng = random.Random(spec.seed)

    def accept(
        self,
        logits: torch.Tensor,
        drafts: list[int],
        sampling: SamplingParams,
        generator: torch.Generator | None,
        stop_ids: frozenset[int],
    ) -> tuple[int, int]:
        """(n_accepted, next_token) as `acceptance.accept_greedy`/`accept_sampled` return them.
        logits: [n+1, V] the verify forward's logits at the pending token and each draft."""
        k = 0
        for i, token in enumerate(drafts):
            keep = i < len(self.conditional) and self.rng.random() < self.conditional[i]
            if not keep or token in stop_ids:
                break
            k += 1
        return k, self._target_token(logits[k], sampling, generator)

    @staticmethod
    def _target_token(row: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> int:
        if sampling.greedy:
            return int(argmax_rows(row[None])[0])
        return int(sample(probs_from_logits(row, sampling), generator))
