"""From committed token ids to what a response carries: text cut at stop strings, then (for chat)
content, reasoning and tool calls. Runs on the HTTP side, one ``TextOutput`` per request; the
worker runs a ``StopCheck`` per request with stop strings, so a request ends (and counts its
tokens) at the token that completed one."""

from __future__ import annotations

from collections.abc import Sequence

from ..chat import ChatEvent, ChatOutputParser
from ..tokenizer import Tokenizer

__all__ = ["StopStrings", "StopCheck", "TextOutput"]


class StopStrings:
    """Cuts a text stream before the first stop string. A suffix that could be the start of one is
    held back until the next piece decides it, so a stop string never leaks into the output."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hit = False
        self._held = ""

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        text = self._held + text
        found = [i for stop in self.stops if (i := text.find(stop)) >= 0]
        if found:
            self.hit, self._held = True, ""
            return text[: min(found)]
        keep = self._partial_length(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        text, self._held = self._held, ""
        return "" if self.hit else text

    def _partial_length(self, text: str) -> int:
        longest = max((len(s) for s in self.stops), default=0)
        for length in range(min(len(text), longest - 1), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0


class StopCheck:
    """Which committed token completes a stop string (a scheduler job's ``stop_check``).

    Called with each round's ids in order; returns how many of them to keep (up to and including
    the token whose text completed a stop string), or None while none has. It decodes token by
    token with the incremental decoder ``TextOutput`` uses and skips the same ``skip_ids`` (the
    end-of-generation ids), so both find the stop string in the same text.
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], *, skip_ids: frozenset[int]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = tokenizer.incremental_decoder()
        self._skip = skip_ids
        self._keep = max((len(s) for s in self.stops), default=1) - 1  # tail a stop may straddle
        self._tail = ""

    def __call__(self, ids: Sequence[int]) -> int | None:
        for i, token in enumerate(ids):
            if token in self._skip:
                continue
            piece = self._decoder.push(token)
            if not piece:
                continue
            text = self._tail + piece
            if any(stop in text for stop in self.stops):
                return i + 1
            self._tail = text[len(text) - self._keep :] if self._keep else ""
        return None


class TextOutput:
    """Token ids in, ``ChatEvent``s out (only ``content`` events when ``chat`` is off)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], *, chat: bool) -> None:
        self._decoder = tokenizer.incremental_decoder()
        self._stops = StopStrings(stops)
        self._parser = ChatOutputParser() if chat else None
        self.text = ""  # everything emitted so far, after stop strings, before chat parsing

    @property
    def stopped(self) -> bool:
        """A stop string was found: the request is complete, later tokens are ignored."""
        return self._stops.hit

    def push(self, ids: list[int]) -> list[ChatEvent]:
        return self._emit(self._stops.feed(self._decoder.push(ids)), final=False)

    def finish(self) -> list[ChatEvent]:
        tail = "" if self._stops.hit else self._stops.feed(self._decoder.flush())
        return self._emit(tail + self._stops.flush(), final=True)

    def _emit(self, text: str, *, final: bool) -> list[ChatEvent]:
        self.text += text
        if self._parser is None:
            return [ChatEvent("content", text)] if text else []
        events = self._parser.feed(text) if text else []
        return [*events, *self._parser.finish()] if final else events
