"""Speculative statistics, per request and cumulative (the CLI/JSON and metrics shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SpecStats"]


@dataclass
class SpecStats:
    type: str = "none"
    n_max: int = 0
    rounds: int = 0  # verify passes that carried at least one draft
    drafted: int = 0
    accepted: int = 0
    accepted_by_position: list[int] = field(default_factory=list)  # [i]: rounds whose draft i was kept
    drafted_by_position: list[int] = field(default_factory=list)  # [i]: rounds that drafted a token i
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    autotune: dict[str, Any] | None = None  # --spec-autotune: what the controller chose (autotune.py)
    synthetic: list[float] | None = None  # imposed acceptance rates (synthetic.py): the text is invalid

    def record(self, n_drafted: int, n_accepted: int) -> None:
        if n_drafted == 0:
            return
        self.rounds += 1
        self.drafted += n_drafted
        self.accepted += n_accepted
        width = max(n_drafted, len(self.drafted_by_position))
        for counts in (self.accepted_by_position, self.drafted_by_position):
            counts.extend([0] * (width - len(counts)))
        for i in range(n_drafted):
            self.drafted_by_position[i] += 1
        for i in range(n_accepted):
            self.accepted_by_position[i] += 1

    def counts(self) -> SpecStats:
        """A copy of the counters (rounds, drafted, accepted, by position), for a later `since`."""
        return SpecStats(
            rounds=self.rounds,
            drafted=self.drafted,
            accepted=self.accepted,
            accepted_by_position=list(self.accepted_by_position),
            drafted_by_position=list(self.drafted_by_position),
        )

    def since(self, seen: SpecStats) -> SpecStats:
        """What these counters added since ``seen`` (an earlier `counts()` of the same statistics)."""

        def minus(a: list[int], b: list[int]) -> list[int]:
            return [x - (b[i] if i < len(b) else 0) for i, x in enumerate(a)]

        return SpecStats(
            rounds=self.rounds - seen.rounds,
            drafted=self.drafted - seen.drafted,
            accepted=self.accepted - seen.accepted,
            accepted_by_position=minus(self.accepted_by_position, seen.accepted_by_position),
            drafted_by_position=minus(self.drafted_by_position, seen.drafted_by_position),
        )

    def merge(self, other: SpecStats) -> None:
        if other.synthetic is not None:
            self.synthetic = list(other.synthetic)  # what it was merged with is then flagged too
        self.rounds += other.rounds
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.draft_ms += other.draft_ms
        self.verify_ms += other.verify_ms
        for mine, theirs in (
            (self.accepted_by_position, other.accepted_by_position),
            (self.drafted_by_position, other.drafted_by_position),
        ):
            mine.extend([0] * (len(theirs) - len(mine)))
            for i, c in enumerate(theirs):
                mine[i] += c

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per verify pass: 1 + accepted / rounds (llama.cpp/vLLM convention)."""
        return 1.0 + self.accepted / self.rounds if self.rounds else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "n_max": self.n_max,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "accepted_by_position": list(self.accepted_by_position),
            "drafted_by_position": list(self.drafted_by_position),
            "mean_accepted_length": self.mean_accepted_length,
            "draft_ms": self.draft_ms,
            "verify_ms": self.verify_ms,
            **({"autotune": self.autotune} if self.autotune is not None else {}),
            **(
                {"synthetic_acceptance": list(self.synthetic), "text_valid": False}
                if self.synthetic is not None
                else {}
            ),
        }
