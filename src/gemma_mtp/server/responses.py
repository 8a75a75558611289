"""Response bodies in OpenAI's shapes (plus llama-server's ``timings``), and OpenAI-shaped errors."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .. import __version__
from ..chat import ChatEvent, ParsedOutput
from ..engine.scheduler import Finished

__all__ = [
    "ApiError",
    "error_body",
    "sse",
    "usage",
    "timings",
    "chat_delta",
    "chat_message",
    "Envelope",
]

FINGERPRINT = f"gemma-mtp-{__version__}"

# llama-server's error types by HTTP status (tools/server/utils.hpp, format_error_response)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """An error response: ``{"error": {"message", "type", "code", "param"}}`` with HTTP ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, type=self.type, param=self.param, **self.extra)


def error_body(
    status: int, message: str, *, type: str | None = None, param: str | None = None, **extra
) -> dict:
    kind = type or ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": status, "param": param, **extra}}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event frame: ``data: {json}`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.n_prompt,
        "completion_tokens": finished.n_generated,
        "total_tokens": finished.n_prompt + finished.n_generated,
    }


def timings(finished: Finished) -> dict[str, float | int]:
    """llama-server's per-request ``timings`` (prompt = prefill and the first token's round)."""
    n_decoded = finished.predicted_n  # tokens after the first round, whose time is in prompt_ms
    predicted_ms = finished.predicted_ms
    prompt_ms = finished.prompt_ms
    return {
        "prompt_n": finished.n_prompt,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / finished.n_prompt if finished.n_prompt else 0.0,
        "prompt_per_second": finished.n_prompt / prompt_ms * 1e3 if prompt_ms > 0 else 0.0,
        "predicted_n": finished.n_generated,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / n_decoded if n_decoded else 0.0,
        "predicted_per_second": n_decoded / predicted_ms * 1e3 if predicted_ms > 0 else 0.0,
        "draft_n": finished.stats.drafted,
        "draft_n_accepted": finished.stats.accepted,
    }


def chat_delta(event: ChatEvent, tool_index: int) -> dict[str, Any]:
    if event.kind == "content":
        return {"content": event.text}
    if event.kind == "reasoning":
        return {"reasoning_content": event.text}
    return {"tool_calls": [{"index": tool_index, **event.tool_call}]}


def chat_message(parsed: ParsedOutput) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = parsed.tool_calls
        message["content"] = parsed.content or None
    return message


class Envelope:
    """The fields every response and chunk of one request shares (id, created, model)."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def _head(self, object_name: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    def chunk(self, choice_or_none: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        """A streamed chunk with one choice (``None``: the usage chunk, ``choices: []``)."""
        name = "chat.completion.chunk" if self.chat else "text_completion"
        choices = [] if choice_or_none is None else [{"index": 0, **choice_or_none}]
        return {**self._head(name), "choices": choices, **extra}

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            return self.chunk({"delta": delta, "logprobs": None, "finish_reason": finish_reason})
        return self.chunk(
            {"text": delta.get("content", ""), "logprobs": None, "finish_reason": finish_reason}
        )

    def response(self, choice: dict[str, Any], finished: Finished) -> dict[str, Any]:
        name = "chat.completion" if self.chat else "text_completion"
        return {
            **self._head(name),
            "choices": [{"index": 0, "logprobs": None, **choice}],
            "usage": usage(finished),
            "timings": timings(finished),
        }
