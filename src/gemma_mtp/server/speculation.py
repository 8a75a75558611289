"""The opt-in ``x_speculation`` field of streamed chunks: how the chunk's tokens were produced.

A request with ``"return_speculation": true`` gets, on every streamed chunk that carries text (and
on the final one), ``"x_speculation": {"draft", "target", "drafted", "accepted", "rounds"}``:
``draft``/``target`` count the committed tokens since the previous such chunk that were accepted
drafts / the target's own tokens (end-of-generation tokens included, so over a response they add
up to ``usage.completion_tokens``); ``drafted``, ``accepted`` and ``rounds`` are the speculation
counters of the rounds that committed them (over a response: ``timings.draft_n``,
``timings.draft_n_accepted`` and the verify rounds that carried drafts). Tokens whose text is held
back (an incomplete character or tag) are counted on the chunk that finally carries it.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..engine.scheduler import Tokens

__all__ = ["FIELD", "SpecTally"]

FIELD = "x_speculation"


class SpecTally:
    """Counts not yet reported on a chunk; ``take`` reports and resets them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.draft = self.target = self.drafted = self.accepted = self.rounds = 0

    def tokens(self, event: Tokens) -> Iterator[tuple[int, bool]]:
        """Count a round, then yield its ids one by one with whether each came from a draft
        (the caller pushes each id's text out before asking for the next)."""
        self.drafted += event.drafted
        self.accepted += event.accepted
        self.rounds += event.drafted > 0
        n_draft = event.n_from_draft
        for i, token in enumerate(event.ids):
            from_draft = i < n_draft
            if from_draft:
                self.draft += 1
            else:
                self.target += 1
            yield token, from_draft

    def take(self) -> dict[str, int]:
        out = {
            "draft": self.draft,
            "target": self.target,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "rounds": self.rounds,
        }
        self._reset()
        return out
