"""Prompt-lookup drafting: find the latest earlier occurrence of the last n tokens and propose
what followed it (n from `ngram_max` down to `ngram_min`). Deterministic, so q is one-hot."""

from __future__ import annotations

import torch

from .base import Draft, DraftRequest

__all__ = ["NgramDrafter", "ngram_lookup"]


def ngram_lookup(tokens: list[int], n_max: int, ngram_max: int, ngram_min: int) -> list[int]:
    for n in range(min(ngram_max, len(tokens) - 1), ngram_min - 1, -1):
        tail = tokens[-n:]
        # search right to left, excluding the tail itself
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail:
                follow = tokens[start + n : start + n + n_max]
                if follow:
                    return follow
    return []


class NgramDrafter:
    name = "ngram"

    def propose(self, requests: list[DraftRequest], hidden: torch.Tensor) -> dict[int, Draft]:
        out = {}
        for r in requests:
            o = r.options
            out[r.row] = Draft(ngram_lookup(r.tokens, r.n_max, o.ngram_max, o.ngram_min), None)
        return out

    def reset_row(self, row: int) -> None:
        pass
