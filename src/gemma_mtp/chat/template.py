"""Rendering a model's own chat template, the way transformers' ``apply_chat_template`` does.

Templates are untrusted code from model files, so they run in jinja2's immutable sandbox with the
environment transformers builds (``utils/chat_template_utils.py``): ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, a ``tojson`` that does not HTML-escape, ``raise_exception``,
``strftime_now``, and a ``namespace`` that refuses underscore names. Messages are cleaned the same
way before rendering (``None`` values dropped, reasoning aliases filled, plain JSON types only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import GemmaMTPError, UsageError

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

__all__ = ["ChatTemplate", "render_chat", "read_chat_template", "to_gemma_tool_messages"]

# The names transformers reads a message's reasoning under; templates read `reasoning_content`.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_READS_TOOL_ROLE = re.compile(r"tool_call_id|role'\]\s*[!=]=\s*['\"]tool['\"]|role\s*[!=]=\s*['\"]tool['\"]")


class ChatTemplate:
    """A compiled chat template plus the special-token strings it is rendered with."""

    def __init__(
        self, source: str, *, special_tokens: Mapping[str, str] | None = None, origin: str = ""
    ) -> None:
        self.source = source
        self.origin = origin or "chat template"
        self.special_tokens = dict(special_tokens or {})
        self._compiled = _compile(source, self.origin)
        # Gemma 4 templates embedded in early GGUFs know the native `tool_responses` field but not
        # OpenAI `role: "tool"` messages; llama.cpp rewrites the messages for those, and so do we.
        self.converts_tool_messages = "tool_responses" in source and not _READS_TOOL_ROLE.search(source)

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: Tokenizer,
        *,
        override_file: str | Path | None = None,
        fallback_file: str | Path | None = None,
    ) -> ChatTemplate:
        """The model's own template (or ``override_file``), with the tokenizer's special tokens;
        ``fallback_file`` stands in when the model has none (the demo pair's base model)."""
        if override_file is None and not tokenizer.chat_template:
            override_file = fallback_file
        if override_file is not None:
            return cls(
                read_chat_template(override_file),
                special_tokens=tokenizer.special_tokens(),
                origin=str(override_file),
            )
        if not tokenizer.chat_template:
            raise GemmaMTPError(
                f"{tokenizer.source}: the model has no chat template; pass --chat-template-file FILE "
                "or a plain prompt without --chat/--jinja"
            )
        return cls(
            tokenizer.chat_template, special_tokens=tokenizer.special_tokens(), origin=tokenizer.source
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (OpenAI chat format); ``enable_thinking=None`` leaves it
        undefined in the template, as transformers does when the caller does not pass it."""
        if not messages:
            raise UsageError("cannot render a chat with no messages")
        chat = _clean_messages(messages)
        if self.converts_tool_messages:
            chat = to_gemma_tool_messages(chat)
        if enable_thinking is not None:
            template_kwargs["enable_thinking"] = enable_thinking
        kwargs = _plain({**self.special_tokens, **template_kwargs})
        try:
            return self._compiled.render(
                messages=chat,
                tools=_plain(list(tools)) if tools is not None else None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except (jinja2.TemplateError, TypeError, ValueError, LookupError) as exc:
            # A template is code from the model file; its failures are the file's, reported in a line.
            raise GemmaMTPError(f"{self.origin}: chat template failed: {exc}") from exc


def render_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    template_file: str | Path | None = None,
    fallback_file: str | Path | None = None,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` with the model's template (or ``template_file``); encode the result with
    ``tokenizer.encode(text)``, which adds no second ``<bos>`` when the template wrote one."""
    template = ChatTemplate.for_tokenizer(tokenizer, override_file=template_file, fallback_file=fallback_file)
    return template.render(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        **template_kwargs,
    )


def read_chat_template(path: str | Path) -> str:
    """A template file: plain Jinja, or a ``tokenizer_config.json``-style JSON with ``chat_template``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--chat-template-file {path}: cannot read it ({exc.strerror or exc})") from exc
    if path.suffix == ".json":
        try:
            template = json.loads(text).get("chat_template")
        except (ValueError, AttributeError) as exc:
            raise UsageError(f"--chat-template-file {path}: not a JSON object with a chat_template") from exc
        if not isinstance(template, str):
            raise UsageError(f"--chat-template-file {path}: no string chat_template in it")
        return template
    return text


def to_gemma_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold OpenAI tool results into Gemma's native form, as llama.cpp does for old templates.

    ``assistant(tool_calls) -> tool+ -> assistant(content)`` becomes one assistant message with
    ``tool_calls``, ``tool_responses: [{"name", "response"}]`` and the final ``content``. A tool
    result that parses as JSON is passed as that value; its name comes from the matching
    ``tool_call_id``, else the call at the same index, else the tool message's ``name``.
    """
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        i += 1
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            out.append(message)
            continue
        merged = dict(message)
        calls = list(message["tool_calls"])
        responses = []
        while i < len(messages) and messages[i].get("role") == "tool":
            responses.append(_tool_response(messages[i], calls, len(responses)))
            i += 1
        if responses:
            merged["tool_responses"] = responses
        if (
            i < len(messages)
            and messages[i].get("role") == "assistant"
            and not messages[i].get("tool_calls")
            and messages[i].get("content")
        ):
            merged["content"] = messages[i]["content"]
            i += 1
        out.append(merged)
    return out


def _tool_response(message: Mapping[str, Any], calls: list[Any], index: int) -> dict[str, Any]:
    names = {
        call.get("id"): call.get("function", {}).get("name") for call in calls if isinstance(call, Mapping)
    }
    name = names.get(message.get("tool_call_id"))
    if name is None and index < len(calls) and isinstance(calls[index], Mapping):
        name = calls[index].get("function", {}).get("name")
    name = name or message.get("name") or message.get("tool_call_id") or "unknown"
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            pass
    return {"name": name, "response": content}


def _clean_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What transformers does before rendering, plus JSON-string tool arguments made objects
    (OpenAI sends them as strings; templates, Gemma's included, format a mapping)."""
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise UsageError(f"chat messages must be objects with a role, got {message!r}")
        message = _plain({key: value for key, value in message.items() if value is not None})
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [_object_arguments(call) for call in message["tool_calls"]]
        chat.append(message)
    return chat


def _object_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _plain(value: Any) -> Any:
    """Plain JSON-like data only: templates must not reach methods of arbitrary objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _plain(value.item())  # numpy scalars: np.bool_(False) must stay falsy
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return f"<{type(value).__name__}>"


# ---------------------------------------------------------------------------------------------
# The jinja environment (mirrors transformers.utils.chat_template_utils._cached_compile_jinja_template)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks in
    transformers; rendering just outputs the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's ``namespace`` minus underscore attributes (a route to interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson HTML-escapes (<, >, &, '), which would corrupt prompts.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@lru_cache(maxsize=16)
def _compile(source: str, origin: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise GemmaMTPError(f"{origin}: chat template line {exc.lineno}: {exc.message}") from exc
