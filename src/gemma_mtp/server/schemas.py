"""Request bodies of the OpenAI endpoints, validated with pydantic, and what they turn into.

Fields are strict (``"max_tokens": "10"`` is an error, not 10) and unknown fields are allowed:
OpenAI clients send many we do not use (``user``, ``metadata``, ``store``). Fields that would change
the output and that we cannot honour (``n > 1``, ``logprobs``, penalties, JSON-schema output) are
refused with a 400 naming them rather than silently ignored. llama.cpp's extensions ``top_k``,
``min_p``, ``ignore_eos`` and ``chat_template_kwargs`` are accepted, plus ``speculative``:
``{"enabled": false}`` or ``{"type": "ngram", "n_max": 2, "n_min": 0, "p_min": 0.0}``, and
``return_speculation`` (streamed chunks then carry ``x_speculation``, see ``speculation.py``).
``tool_choice`` selects which tools reach the template (``"none"``: none; a named function: that
one); nothing constrains decoding, so ``"required"`` cannot force the model to call a tool.
User messages may carry ``image_url`` and ``input_audio`` content parts (decoded in ``media.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UsageError
from ..sampling import SamplingParams
from ..speculative.options import MAX_DRAFT, SPEC_CHOICES, SPEC_TYPES, SpecOptions, canonical_spec_type

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "ChatMessage",
    "ContentPart",
    "MEDIA_PARTS",
    "SpeculativeField",
    "RequestError",
    "parse_request",
    "sampling_params",
    "spec_options",
    "unsupported_fields",
]

_SAMPLING = SamplingParams()


class RequestError(ValueError):
    """A request the server refuses (400); ``param`` names the field at fault when there is one."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class SpeculativeField(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    enabled: bool | None = None
    type: str | None = None  # SPEC_CHOICES, or a llama.cpp name: checked in `spec_options` (one message)
    n_max: int | None = Field(default=None, ge=0, le=MAX_DRAFT)
    n_min: int | None = Field(default=None, ge=0, le=MAX_DRAFT)
    p_min: float | None = Field(default=None, ge=0.0, le=1.0)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generation(_Strict):
    """What completions and chat completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-1, le=2**64 - 1)
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    speculative: SpeculativeField | None = None
    return_speculation: bool = False  # streamed chunks say how their tokens were made (speculation.py)
    # accepted for compatibility; values that would change the output are refused below
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def n_predict(self, default: int) -> int:
        return self.max_tokens if self.max_tokens is not None else default


class ImageURL(_Strict):
    url: str
    detail: str | None = None  # OpenAI's resolution hint; the processor's budget decides here


class InputAudio(_Strict):
    data: str  # base64
    format: str | None = None  # "wav"


# content part type -> the field that carries it and the kind of media it is
MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


class ContentPart(_Strict):
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None  # some clients send the URL itself
    input_audio: InputAudio | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class ToolChoiceFunction(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def n_predict(self, default: int) -> int:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return super().n_predict(default)


class CompletionRequest(_Generation):
    prompt: str | list[int] | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


def parse_request(body: bytes, model: type[BaseModel]) -> Any:
    """The validated request, or RequestError with a message naming the field and what it needs."""
    if not body.strip():
        raise RequestError("the request body is empty; send a JSON object")
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        if error["type"] == "json_invalid":
            raise RequestError(f"the request body is not valid JSON: {error['msg']}") from None
        path = _field_path(error["loc"])
        if not path:
            raise RequestError(f"the request body must be a JSON object: {error['msg']}") from None
        raise RequestError(f"{path}: {error['msg']}", param=path) from None
    for field, message in unsupported_fields(request):
        raise RequestError(f"{field}: {message}", param=field)
    return request


def _field_path(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "content")`` -> ``messages[0].content``; union member tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "dict", "list") or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def unsupported_fields(request: _Generation) -> list[tuple[str, str]]:
    """(field, why) for each option set to something this server cannot do."""
    out = []
    if request.n != 1:
        out.append(("n", "only n=1 is supported; send several requests for several answers"))
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            out.append((name, "penalties are not supported; leave it out or set 0"))
    if request.logprobs:
        out.append(("logprobs", "log probabilities are not supported; leave it out"))
    if request.logit_bias:
        out.append(("logit_bias", "logit bias is not supported; leave it out"))
    if isinstance(request, ChatCompletionRequest):
        kind = (request.response_format or {}).get("type", "text")
        if kind != "text":
            out.append(("response_format", f"type {kind!r} is not supported; only 'text'"))
        out += _content_part_errors(request.messages)
    if isinstance(request, CompletionRequest):
        if isinstance(request.prompt, list) and request.prompt and isinstance(request.prompt[0], str):
            if len(request.prompt) != 1:
                out.append(("prompt", "one prompt per request; send a string or a list of token ids"))
        if request.echo:
            out.append(("echo", "echo is not supported"))
        if request.suffix:
            out.append(("suffix", "suffix (fill-in-the-middle) is not supported"))
        if request.best_of not in (None, 1):
            out.append(("best_of", "only best_of=1 is supported"))
    return out


def _content_part_errors(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    out = []
    for i, message in enumerate(messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            field = f"messages[{i}].content[{j}]"
            if part.type == "text":
                continue
            if part.type not in MEDIA_PARTS:
                kinds = ", ".join(["text", *MEDIA_PARTS])
                out.append(
                    (f"{field}.type", f"content parts of type {part.type!r} are not supported; use {kinds}")
                )
            elif getattr(part, part.type) is None:
                out.append(
                    (f"{field}.{part.type}", f"a part of type {part.type!r} needs its {part.type!r} field")
                )
            elif message.role != "user":
                out.append(
                    (field, f"{MEDIA_PARTS[part.type]}s go in user messages, not {message.role!r} ones")
                )
    return out


def sampling_params(request: _Generation) -> SamplingParams:
    """llama.cpp's defaults (``SamplingParams``) for every field the request leaves out."""
    seed = request.seed if request.seed is not None and request.seed >= 0 else None
    try:
        return SamplingParams(
            temperature=_SAMPLING.temperature if request.temperature is None else request.temperature,
            top_k=_SAMPLING.top_k if request.top_k is None else request.top_k,
            top_p=_SAMPLING.top_p if request.top_p is None else request.top_p,
            min_p=_SAMPLING.min_p if request.min_p is None else request.min_p,
            seed=seed,
        )
    except UsageError as exc:
        raise RequestError(str(exc)) from None


def spec_options(field: SpeculativeField | None, default: SpecOptions, available: set[str]) -> SpecOptions:
    """The request's speculative settings over the server's; ``available``: drafters loaded."""
    if field is None:
        return default
    if field.enabled is False:
        return SpecOptions(type="none")
    try:
        kind = canonical_spec_type(field.type or default.type)
    except UsageError as exc:  # a llama.cpp strategy we lack: the CLI's "not supported, use X"
        raise RequestError(
            f"speculative.type: {str(exc).removeprefix('--spec-type ')}", param="speculative.type"
        ) from None
    if kind not in SPEC_TYPES:
        raise RequestError(
            f"speculative.type {kind!r} is not one of {', '.join(SPEC_CHOICES)}", param="speculative.type"
        )
    if kind == "none" and field.enabled:
        raise RequestError(
            "speculative.enabled: the server runs without speculation; name a speculative.type "
            "(ngram needs no drafter)",
            param="speculative.type",
        )
    if kind in ("mtp", "draft") and kind not in available:
        need = "an MTP assistant" if kind == "mtp" else "a draft model"
        raise RequestError(
            f"speculative.type {kind} needs {need}: start the server with -md/--model-draft",
            param="speculative.type",
        )
    n_max = default.n_max if field.n_max is None else field.n_max
    n_min = min(default.n_min, n_max) if field.n_min is None else field.n_min
    p_min = default.p_min if field.p_min is None else field.p_min
    try:
        autotune = default.autotune and field.n_max is None  # an explicit n_max is a fixed choice
        return SpecOptions(type=kind, n_max=n_max, n_min=n_min, p_min=p_min, autotune=autotune)
    except UsageError as exc:
        raise RequestError(f"speculative: {exc}", param="speculative") from None
