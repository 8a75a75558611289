"""Harness arithmetic: totals over generations, per-rep metrics, mean and 1 sigma over reps.

Every rate is a ratio of totals, never a mean of per-generation ratios: tokens/s is the tokens
decoded after the first one over the decode time, summed over the prompts of a rep; acceptance at
draft position i is (rounds whose i-th draft was kept) / (rounds that drafted an i-th token), the
convention of vLLM's per-position counters and of `SpecStats`. Reps use distinct seeds; the spread
reported is the sample standard deviation over reps (0 with a single rep).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Generation", "Totals", "totals", "mean_std", "summarize"]


@dataclass(frozen=True, kw_only=True)
class Generation:
    """One generation's numbers, from the engine's `Result` or a server's response."""

    category: str
    rep: int
    n_decoded: int  # tokens after the first round (whose time is the time to the first token)
    decode_ms: float
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0  # verify passes that carried drafts
    accepted_by_position: tuple[int, ...] = ()
    drafted_by_position: tuple[int, ...] = ()
    autotune_chosen: tuple[int, ...] = ()  # rounds per n chosen, with --spec-autotune
    ttft_ms: float | None = None  # time to the first token: prefill and the round that sampled it
    n_generated: int | None = None  # every token generated (default: n_decoded + the first)

    @classmethod
    def from_result(cls, result: Any, *, category: str, rep: int) -> Generation:
        """From `Engine.generate`'s `Result` (or its `to_dict()`)."""
        d = result if isinstance(result, Mapping) else result.to_dict()
        spec = d.get("speculative") or {}
        return cls(
            category=category,
            rep=rep,
            n_decoded=int(d["timings"].get("decode_tokens", max(int(d["n_generated"]) - 1, 0))),
            n_generated=int(d["n_generated"]),
            decode_ms=float(d["timings"]["decode_ms"]),
            drafted=int(spec.get("drafted", 0)),
            accepted=int(spec.get("accepted", 0)),
            rounds=int(spec.get("rounds", 0)),
            accepted_by_position=tuple(spec.get("accepted_by_position", ())),
            drafted_by_position=tuple(spec.get("drafted_by_position", ())),
            autotune_chosen=tuple((spec.get("autotune") or {}).get("chosen", ())),
            ttft_ms=float(d["timings"]["prompt_ms"]) if "prompt_ms" in d.get("timings", {}) else None,
        )


def _add(into: list[int], values: Sequence[int]) -> None:
    into.extend([0] * (len(values) - len(into)))
    for i, v in enumerate(values):
        into[i] += v


@dataclass
class Totals:
    n_decoded: int = 0
    decode_ms: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    n_generations: int = 0
    n_generated: int = 0
    accepted_by_position: list[int] = field(default_factory=list)
    drafted_by_position: list[int] = field(default_factory=list)
    autotune_chosen: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float | None:
        """Tokens committed per target forward (the first token's included): every forward commits
        one token plus the drafts it accepted, so forwards = tokens - accepted."""
        tokens = self.n_generated
        forwards = tokens - self.accepted
        return tokens / forwards if forwards > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.n_decoded / (self.decode_ms / 1e3) if self.decode_ms > 0 else None

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def acceptance_by_position(self) -> list[float | None]:
        kept = self.accepted_by_position
        return [
            (kept[i] if i < len(kept) else 0) / d if d else None
            for i, d in enumerate(self.drafted_by_position)
        ]

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens committed per verify pass that carried drafts: 1 + accepted / rounds."""
        return 1.0 + self.accepted / self.rounds if self.rounds else None


def totals(generations: Iterable[Generation]) -> Totals:
    t = Totals()
    for g in generations:
        t.n_decoded += g.n_decoded
        t.decode_ms += g.decode_ms
        t.drafted += g.drafted
        t.accepted += g.accepted
        t.rounds += g.rounds
        t.n_generations += 1
        t.n_generated += g.n_generated if g.n_generated is not None else g.n_decoded + 1
        if g.ttft_ms is not None:
            t.ttft_ms.append(g.ttft_ms)
        _add(t.accepted_by_position, g.accepted_by_position)
        _add(t.drafted_by_position, g.drafted_by_position)
        _add(t.autotune_chosen, g.autotune_chosen)
    # a position drafted in some generations only: pad the accepted counts to the same length
    t.accepted_by_position.extend([0] * (len(t.drafted_by_position) - len(t.accepted_by_position)))
    return t


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (σ = 0 for one value)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(
    generations: Sequence[Generation], baseline_tokens_per_s: Mapping[int, float] | None = None
) -> dict[str, Any]:
    """Mean ± 1σ over reps of one configuration's metrics.

    `baseline_tokens_per_s[rep]`: plain decoding's rate in the same rep, for the speedup (a paired
    ratio per rep, then averaged).
    """
    by_rep: dict[int, list[Generation]] = {}
    for g in generations:
        by_rep.setdefault(g.rep, []).append(g)
    reps = {rep: totals(gs) for rep, gs in sorted(by_rep.items())}
    out: dict[str, Any] = {"reps": len(reps), "n_generations": len(generations)}

    def put(name: str, values: Iterable[float | None]) -> None:
        out[name], out[f"{name}_std"] = mean_std(values)

    put("tokens_per_s", (t.tokens_per_s for t in reps.values()))
    if baseline_tokens_per_s is not None:
        base = baseline_tokens_per_s
        put("speedup", (_ratio(t.tokens_per_s, base.get(rep)) for rep, t in reps.items()))
    put("acceptance", (t.acceptance for t in reps.values()))
    put("mean_accepted_length", (t.mean_accepted_length for t in reps.values()))
    put("tokens_per_forward", (t.tokens_per_forward for t in reps.values()))
    put("ttft_ms", (statistics.median(t.ttft_ms) if t.ttft_ms else None for t in reps.values()))
    width = max((len(t.drafted_by_position) for t in reps.values()), default=0)
    by_position = [mean_std(_at(t.acceptance_by_position, i) for t in reps.values()) for i in range(width)]
    out["acceptance_by_position"] = [m for m, _ in by_position]
    out["acceptance_by_position_std"] = [s for _, s in by_position]
    all_reps = totals(generations)
    out["drafted"] = all_reps.drafted
    out["accepted"] = all_reps.accepted
    out["n_decoded"] = all_reps.n_decoded
    if any(all_reps.autotune_chosen):
        out["autotune_chosen"] = all_reps.autotune_chosen
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _at(values: Sequence[float | None], i: int) -> float | None:
    return values[i] if i < len(values) else None
