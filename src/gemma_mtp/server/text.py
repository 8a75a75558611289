"""From committed token ids to what a response carries: text cut at stop strings, then (for chat)
content, reasoning and tool calls. Runs on the HTTP side, one ``TextOutput`` per request."""

from __future__ import annotations

from collections.abc import Sequence

from ..chat import ChatEvent, ChatOutputParser
from ..tokenizer import Tokenizer

__all__ = ["StopStrings", "TextOutput"]


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
