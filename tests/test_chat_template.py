"""Chat templates render exactly as transformers' ``apply_chat_template`` renders them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from asset_helpers import fetch

from gemma_mtp.assets import llama_cpp_template, llama_cpp_vocab
from gemma_mtp.chat import ChatTemplate, parse_chat_output, read_chat_template, render_chat
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.tokenizer import Tokenizer, read_gguf_metadata

SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}


@pytest.fixture(scope="module")
def gguf_template() -> str:
    """The template embedded in llama.cpp's Gemma 4 vocabulary (an early one: no role "tool")."""
    path = fetch(lambda: llama_cpp_vocab("gemma-4"))
    return read_gguf_metadata(path, prefix="tokenizer.chat_template")["tokenizer.chat_template"]


@pytest.fixture(scope="module")
def official_template() -> str:
    """The later official Gemma 4 template, which reads OpenAI tool messages itself."""
    return fetch(llama_cpp_template).read_text(encoding="utf-8")


def transformers_render(template: str, messages: list[dict], **kwargs: Any) -> str:
    """transformers' public path: a tokenizer carrying the template, ``apply_chat_template``."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel

    vocab = {text: i for i, text in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"])}
    backend = Backend(WordLevel(vocab, unk_token="<unk>"))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, **SPECIAL_TOKENS
    )
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "description": "Forecast days", "nullable": True},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
            },
            "required": ["city"],
        },
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "tags": ["a", "b"]}},
}
USER = {"role": "user", "content": "  What's the weather in Paris? <b>bold</b>  "}
CONVERSATIONS = {
    "user": [USER],
    "system": [{"role": "system", "content": "You are terse.\n"}, USER],
    "multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "<|channel>thought\nGreeting.<channel|>Hello!",
            "reasoning_content": None,
        },
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ],
    "native_tool_turn": [
        USER,
        {
            "role": "assistant",
            "tool_calls": [CALL],
            "tool_responses": [{"name": "get_weather", "response": {"temperature": 21, "sky": "clear"}}],
        },
    ],
    "native_tool_answer": [
        USER,
        {
            "role": "assistant",
            "tool_calls": [CALL],
            "tool_responses": [{"name": "get_weather", "response": "sunny"}],
            "content": "It is sunny.",
        },
        {"role": "user", "content": "Thanks"},
    ],
}


@pytest.mark.parametrize(
    "thinking", [None, True, False], ids=["thinking_unset", "thinking_on", "thinking_off"]
)
@pytest.mark.parametrize("with_tools", [False, True], ids=["no_tools", "tools"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_gguf_template_renders_as_transformers(
    gguf_template: str, name: str, with_tools: bool, thinking: bool | None
) -> None:
    messages = CONVERSATIONS[name]
    kwargs: dict[str, Any] = {"tools": [WEATHER_TOOL] if with_tools else None, "add_generation_prompt": True}
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    ours = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS).render(messages, **kwargs)
    assert ours == transformers_render(gguf_template, messages, **kwargs)


def test_without_generation_prompt_renders_as_transformers(gguf_template: str) -> None:
    messages = CONVERSATIONS["multi_turn"]
    ours = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS).render(
        messages, add_generation_prompt=False
    )
    assert ours == transformers_render(gguf_template, messages, add_generation_prompt=False)
    assert ours.startswith("<bos><|turn>system\nYou are terse.<turn|>\n")


def test_thinking_switch_writes_the_think_token(gguf_template: str) -> None:
    template = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS)
    on = template.render([USER], enable_thinking=True)
    off = template.render([USER], enable_thinking=False)
    assert on.startswith("<bos><|turn>system\n<|think|>") and on.endswith("<|turn>model\n")
    assert "<|think|>" not in off and off.endswith("<|turn>model\n<|channel>thought\n<channel|>")


OPENAI_TOOL_CHAT = [
    USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {**CALL, "function": {**CALL["function"], "arguments": json.dumps(CALL["function"]["arguments"])}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
    {"role": "assistant", "content": "21 degrees and clear."},
    {"role": "user", "content": "Thanks"},
]


def test_openai_tool_messages_become_gemma_native_for_old_templates(gguf_template: str) -> None:
    template = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS)
    assert template.converts_tool_messages
    native = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [CALL],
            "tool_responses": [{"name": "get_weather", "response": {"temperature": 21, "sky": "clear"}}],
            "content": "21 degrees and clear.",
        },
        {"role": "user", "content": "Thanks"},
    ]
    ours = template.render(OPENAI_TOOL_CHAT)
    assert ours == transformers_render(gguf_template, native, add_generation_prompt=True)
    assert (
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2,tags:[<|"|>a<|"|>,<|"|>b<|"|>]}'
        '<tool_call|><|tool_response>response:get_weather{sky:<|"|>clear<|"|>,temperature:21}<tool_response|>'
        "21 degrees and clear.<turn|>\n<|turn>user\nThanks<turn|>\n"
    ) in ours


def test_tool_result_is_named_after_its_call(gguf_template: str) -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [CALL, {**CALL, "id": "call_2", "function": {"name": "get_time", "arguments": {}}}],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    rendered = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS).render(messages)
    assert 'response:get_time{value:<|"|>noon<|"|>}' in rendered
    assert 'response:get_weather{value:<|"|>rain<|"|>}' in rendered


def test_official_template_reads_openai_tool_messages_itself(official_template: str) -> None:
    template = ChatTemplate(official_template, special_tokens=SPECIAL_TOKENS)
    assert not template.converts_tool_messages
    dict_arguments = [
        OPENAI_TOOL_CHAT[0],
        {**OPENAI_TOOL_CHAT[1], "tool_calls": [CALL]},
        *OPENAI_TOOL_CHAT[2:],
    ]
    expected = transformers_render(
        official_template,
        [{k: v for k, v in m.items() if v is not None} for m in dict_arguments],
        add_generation_prompt=True,
        tools=[WEATHER_TOOL],
    )
    assert template.render(OPENAI_TOOL_CHAT, tools=[WEATHER_TOOL]) == expected
    assert "<|tool_response>response:get_weather{" in expected


def test_parser_reads_back_the_calls_the_template_writes(gguf_template: str) -> None:
    arguments = {
        "city": 'Zürich, "CH"',
        "n": 3,
        "x": -1.25,
        "ok": True,
        "list": [1, "two", {"three": [False]}],
        "empty": {},
    }
    message = {"role": "assistant", "tool_calls": [{"function": {"name": "lookup", "arguments": arguments}}]}
    rendered = ChatTemplate(gguf_template, special_tokens=SPECIAL_TOKENS).render(
        [USER, message], add_generation_prompt=False
    )
    model_text = rendered[
        rendered.index("<|tool_call>") : rendered.index("<tool_call|>") + len("<tool_call|>")
    ]
    parsed = parse_chat_output(model_text)
    assert parsed.content == ""
    assert [call["function"]["name"] for call in parsed.tool_calls] == ["lookup"]
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == arguments


# ---------------------------------------------------------------------------------------------
# The jinja environment: transformers' globals, filters and sandbox


def render_source(source: str, **kwargs: Any) -> str:
    return ChatTemplate(source, special_tokens=SPECIAL_TOKENS).render([USER], **kwargs)


def test_environment_matches_transformers_on_its_extras() -> None:
    source = (
        "{% for m in messages %}{{ m | tojson }}|{{ m | tojson(indent=2) }}{% endfor %}\n"
        "  {% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}"
        "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }} {{ dict(a=1) }}"
        "{% generation %}gen{% endgeneration %}{{ bos_token }}{{ add_generation_prompt }}"
    )
    assert render_source(source) == transformers_render(source, [USER], add_generation_prompt=True)
    assert "What's the weather in Paris? <b>bold</b>" in render_source(source)  # tojson does not HTML-escape


def test_strftime_now_is_available() -> None:
    assert len(render_source("{{ strftime_now('%Y') }}")) == 4


def test_raise_exception_becomes_a_one_line_error() -> None:
    with pytest.raises(GemmaMTPError, match="chat template failed: only user roles"):
        render_source("{{ raise_exception('only user roles') }}")


def test_templates_cannot_reach_python_internals() -> None:
    with pytest.raises(GemmaMTPError):
        render_source("{{ ''.__class__.__mro__ }}")
    with pytest.raises(GemmaMTPError):
        render_source("{% set ns = namespace() %}{% set ns._x = 1 %}")


def test_syntax_errors_name_the_template_and_line() -> None:
    with pytest.raises(GemmaMTPError, match="chat template line 2"):
        ChatTemplate("ok\n{% if %}", origin="chat template")


# ---------------------------------------------------------------------------------------------
# Where the template comes from


def tokenizer_with(template: str | None) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel

    backend = Backend(WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}, unk_token="<unk>"))
    return Tokenizer(backend, bos_id=2, eos_id=1, pad_id=0, unk_id=3, chat_template=template, source="tiny")


def test_render_chat_uses_the_model_template_or_the_override(tmp_path: Path) -> None:
    tokenizer = tokenizer_with("{{ bos_token }}{{ messages[0]['content'] }}")
    assert render_chat(tokenizer, [{"role": "user", "content": "hi"}]) == "<bos>hi"
    override = tmp_path / "t.jinja"
    override.write_text("[{{ messages | length }}]")
    assert render_chat(tokenizer, [{"role": "user", "content": "hi"}], template_file=override) == "[1]"
    as_json = tmp_path / "tokenizer_config.json"
    as_json.write_text(json.dumps({"chat_template": "json:{{ eos_token }}"}))
    assert read_chat_template(as_json) == "json:{{ eos_token }}"


def test_a_model_without_template_says_how_to_proceed() -> None:
    with pytest.raises(GemmaMTPError, match="--chat-template-file"):
        render_chat(tokenizer_with(None), [{"role": "user", "content": "hi"}])


def test_missing_override_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--chat-template-file"):
        read_chat_template(tmp_path / "nope.jinja")
