"""`SamplingParams`: the sampling settings, torch-free (the CLI reads its defaults from here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from gemma_mtp.errors import UsageError

__all__ = ["SamplingParams"]

_SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts any uint64


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's and the CLI reads them from here."""

    temperature: float = 0.8  # <= 0 means greedy (argmax)
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    min_p: float = 0.05  # 0.0 = off
    seed: int | None = None  # None = a fresh random seed

    def __post_init__(self) -> None:
        if not _is_real(self.temperature) or not math.isfinite(self.temperature):
            raise UsageError(
                f"temperature must be a finite number (<= 0 for greedy), got {self.temperature!r}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise UsageError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise UsageError(f"top_p must be in [0, 1] (1 = off), got {self.top_p!r}")
        if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise UsageError(f"min_p must be in [0, 1] (0 = off), got {self.min_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= _SEED_MAX):
            raise UsageError(f"seed must be None or an integer in [0, 2**64 - 1], got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
