"""Splitting Gemma 4 output text into content, reasoning and OpenAI tool calls, chunk by chunk.

The model writes its reasoning as ``<|channel>thought\\n...<channel|>`` and each tool call as
``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:42,nested:{...},list:[...]}<tool_call|>``: bare keys,
strings between ``<|"|>`` tokens, JSON numbers and literals. Text arrives in arbitrary pieces (a
piece may end in ``<|to``), so a suffix that could start a marker is held back until the next one
decides it. A tool call that does not parse is passed on as plain content, never an exception.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatEvent",
    "ChatOutputParser",
    "ParsedOutput",
    "collect_events",
    "parse_chat_output",
    "parse_tool_call",
]

CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<|tool_call>", "<tool_call|>"
QUOTE = '<|"|>'
THOUGHT = "thought"
_CONTENT_MARKERS = (CHANNEL_OPEN, TOOL_CALL_OPEN, CHANNEL_CLOSE)

EventKind = Literal["content", "reasoning", "tool_call"]


@dataclass(frozen=True)
class ChatEvent:
    """One parser output: a ``content`` or ``reasoning`` text delta, or a complete ``tool_call``
    (``{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}``)."""

    kind: EventKind
    text: str = ""
    tool_call: dict[str, Any] | None = None


@dataclass
class ParsedOutput:
    """All events of one answer, joined: what an OpenAI chat message carries."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ChatOutputParser:
    """Streaming parser: ``feed(chunk)`` returns the events that chunk completes, ``finish()`` the rest.

    ``make_id`` gives each tool call its id (default ``call_<24 hex>``).
    """

    def __init__(self, *, make_id: Callable[[], str] | None = None) -> None:
        self._make_id = make_id or _random_call_id
        self._state = "content"  # content | header | header_space | reasoning | tool_call
        self._buffer = ""
        self._events: list[ChatEvent] = []

    def feed(self, chunk: str) -> list[ChatEvent]:
        self._buffer += chunk
        return self._drain(final=False)

    def finish(self) -> list[ChatEvent]:
        return self._drain(final=True)

    def _emit(self, kind: EventKind, text: str) -> None:
        if not text:
            return
        if self._events and self._events[-1].kind == kind and self._events[-1].tool_call is None:
            text = self._events.pop().text + text
        self._events.append(ChatEvent(kind, text))

    def _drain(self, *, final: bool) -> list[ChatEvent]:
        while self._step(final):
            pass
        events, self._events = self._events, []
        return events

    def _step(self, final: bool) -> bool:
        """Consume what the buffer allows in the current state; True when the state changed."""
        buffer = self._buffer
        if self._state == "content":
            index, marker = _find_first(buffer, _CONTENT_MARKERS)
            if marker is None:
                self._emit_held(buffer, "content", _CONTENT_MARKERS, final)
                return False
            self._emit("content", buffer[:index])
            self._buffer = buffer[index + len(marker) :]
            # A stray <channel|> is dropped, as llama.cpp's Gemma 4 parser does.
            self._state = {CHANNEL_OPEN: "header", TOOL_CALL_OPEN: "tool_call"}.get(marker, "content")
            return True
        if self._state == "header":  # after <|channel>: the channel name, normally "thought"
            if buffer.startswith(THOUGHT):
                self._buffer, self._state = buffer[len(THOUGHT) :], "header_space"
                return True
            if THOUGHT.startswith(buffer) and not final:
                return False
            self._state = "reasoning"
            return True
        if self._state == "header_space":
            self._buffer = buffer.lstrip()
            if not self._buffer and not final:
                return False
            self._state = "reasoning"
            return True
        if self._state == "reasoning":
            index = buffer.find(CHANNEL_CLOSE)
            if index < 0:
                self._emit_held(buffer, "reasoning", (CHANNEL_CLOSE,), final)
                return False
            self._emit("reasoning", buffer[:index])
            self._buffer, self._state = buffer[index + len(CHANNEL_CLOSE) :], "content"
            return True
        end = _tool_call_end(buffer)
        if end < 0:
            if final:
                self._emit_tool_call(buffer, closed=False)
                self._buffer = ""
            return False
        self._emit_tool_call(buffer[:end], closed=True)
        self._buffer, self._state = buffer[end + len(TOOL_CALL_CLOSE) :], "content"
        return True

    def _emit_held(self, buffer: str, kind: EventKind, markers: tuple[str, ...], final: bool) -> None:
        keep = 0 if final else _partial_marker_length(buffer, markers)
        self._emit(kind, buffer[: len(buffer) - keep])
        self._buffer = buffer[len(buffer) - keep :]

    def _emit_tool_call(self, body: str, *, closed: bool) -> None:
        try:
            name, arguments = parse_tool_call(body)
        except ValueError:
            self._emit("content", TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if closed else ""))
            return
        call = {"id": self._make_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
        self._events.append(ChatEvent("tool_call", tool_call=call))


def parse_chat_output(text: str, *, make_id: Callable[[], str] | None = None) -> ParsedOutput:
    """Parse a complete answer at once."""
    parser = ChatOutputParser(make_id=make_id)
    return collect_events([*parser.feed(text), *parser.finish()])


def collect_events(events: Iterable[ChatEvent]) -> ParsedOutput:
    out = ParsedOutput()
    for event in events:
        if event.kind == "content":
            out.content += event.text
        elif event.kind == "reasoning":
            out.reasoning += event.text
        elif event.tool_call is not None:
            out.tool_calls.append(event.tool_call)
    return out


def _random_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _find_first(text: str, markers: tuple[str, ...]) -> tuple[int, str | None]:
    found = [(index, marker) for marker in markers if (index := text.find(marker)) >= 0]
    return min(found) if found else (-1, None)


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that a marker starts with (held back)."""
    for length in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(marker.startswith(text[-length:]) for marker in markers):
            return length
    return 0


def _tool_call_end(text: str) -> int:
    """Index of the ``<tool_call|>`` that closes the call, skipping any inside strings; -1 if none."""
    position, in_string = 0, False
    while True:
        close = text.find(TOOL_CALL_CLOSE, position)
        quote = text.find(QUOTE, position)
        if quote >= 0 and (close < 0 or quote < close):
            in_string, position = not in_string, quote + len(QUOTE)
        elif close < 0:
            return -1
        elif not in_string:
            return close
        else:
            position = close + len(TOOL_CALL_CLOSE)


# ---------------------------------------------------------------------------------------------
# Gemma's argument syntax -> JSON text (built as text, like llama.cpp, so numbers stay verbatim)

_CALL = re.compile(r"\s*call:([^\s{}<>]+)")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_BARE_KEY = re.compile(r"([^:}]+):")
_SPACE = re.compile(r"\s*")
_LITERALS = ("true", "false", "null")


def parse_tool_call(body: str) -> tuple[str, str]:
    """``call:NAME{...}`` (the text between the tool-call markers) -> (name, JSON arguments).

    Raises ValueError on anything outside the grammar llama.cpp accepts for Gemma 4 calls.
    """
    match = _CALL.match(body)
    if match is None:
        raise ValueError(f"not a Gemma tool call: {body[:40]!r}")
    if not body.startswith("{", match.end()):
        raise ValueError(f"tool call {match.group(1)!r} has no argument object")
    arguments, position = _dict(body, match.end())
    if body[position:].strip():
        raise ValueError(f"text after the arguments of {match.group(1)!r}: {body[position:][:40]!r}")
    return match.group(1), arguments


def _skip(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()


def _string(text: str, position: int) -> tuple[str, int]:
    start = position + len(QUOTE)
    end = text.find(QUOTE, start)
    if end < 0:
        raise ValueError("unterminated string")
    return text[start:end], end + len(QUOTE)


def _value(text: str, position: int) -> tuple[str, int]:
    if text.startswith(QUOTE, position):
        value, position = _string(text, position)
        return json.dumps(value, ensure_ascii=False), position
    if text.startswith("{", position):
        return _dict(text, position)
    if text.startswith("[", position):
        return _list(text, position)
    for literal in _LITERALS:
        if text.startswith(literal, position):
            return literal, position + len(literal)
    number = _NUMBER.match(text, position)
    if number is None:
        raise ValueError(f"unexpected {text[position : position + 20]!r}")
    return number.group(), number.end()


def _key(text: str, position: int) -> tuple[str, int]:
    if text.startswith(QUOTE, position):
        key, position = _string(text, position)
        position = _skip(text, position)
        if not text.startswith(":", position):
            raise ValueError(f"no ':' after key {key!r}")
        return key, position + 1
    match = _BARE_KEY.match(text, position)
    if match is None or not match.group(1).strip():
        raise ValueError(f"bad key at {text[position : position + 20]!r}")
    return match.group(1).strip(), match.end()


def _dict(text: str, position: int) -> tuple[str, int]:
    position = _skip(text, position + 1)
    if text.startswith("}", position):
        return "{}", position + 1
    members = []
    while True:
        key, position = _key(text, position)
        value, position = _value(text, _skip(text, position))
        members.append(f"{json.dumps(key, ensure_ascii=False)}:{value}")
        position = _skip(text, position)
        if text.startswith(",", position):
            position = _skip(text, position + 1)
        elif text.startswith("}", position):
            return "{" + ",".join(members) + "}", position + 1
        else:
            raise ValueError(f"expected ',' or '}}' at {text[position : position + 20]!r}")


def _list(text: str, position: int) -> tuple[str, int]:
    position = _skip(text, position + 1)
    if text.startswith("]", position):
        return "[]", position + 1
    items = []
    while True:
        value, position = _value(text, position)
        items.append(value)
        position = _skip(text, position)
        if text.startswith(",", position):
            position = _skip(text, position + 1)
        elif text.startswith("]", position):
            return "[" + ",".join(items) + "]", position + 1
        else:
            raise ValueError(f"expected ',' or ']' at {text[position : position + 20]!r}")
