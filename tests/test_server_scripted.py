"""`gemma-mtp serve` on a known answer: a one-slot server whose decoder commits a scripted answer
(`server_model.ScriptedDecoder`) instead of the random model's, so tool calls, reasoning and stop
strings are checked on exact text while everything after the decoder runs as is."""

from __future__ import annotations

import json

import pytest
import server_model
from server_model import API_KEY, AUTH, MODEL, ScriptedDecoder, say

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gemma_mtp.chat import render_chat  # noqa: E402
from gemma_mtp.server.service import Service  # noqa: E402

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def scripted(reference_models, tmp_path_factory):
    models = server_model.servable_models(reference_models, tmp_path_factory.mktemp("server"))
    with server_model.scripted_server(models) as running:
        running.wait_ready()
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, timeout=60, max_retries=0)
        yield running, client


def chat_ids(service: Service, messages: list[dict], **kwargs) -> list[int]:
    return service.tokenizer.encode(render_chat(service.tokenizer, messages, **kwargs))


TOOL_CALL = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_response>'
WEATHER_CHAT = [{"role": "user", "content": "weather in Paris?"}]


def test_tool_call_comes_back_in_openai_shape(scripted):
    running, client = scripted
    say(running, TOOL_CALL)
    answer = client.chat.completions.create(model=MODEL, messages=WEATHER_CHAT, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    service = running.state.service
    with_tools = chat_ids(service, WEATHER_CHAT, tools=[WEATHER_TOOL])
    assert answer.usage.prompt_tokens == len(with_tools) > len(chat_ids(service, WEATHER_CHAT))


def test_streamed_tool_call_and_the_tool_result_turn(scripted):
    running, client = scripted
    say(running, TOOL_CALL)
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=WEATHER_CHAT, tools=[WEATHER_TOOL], stream=True)
    )
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    say(running, "Sunny.")
    follow_up = [
        *WEATHER_CHAT,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude={"index"})]},
        {"role": "tool", "tool_call_id": calls[0].id, "name": "get_weather", "content": "sunny"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "Sunny."
    assert answer.choices[0].finish_reason == "stop"


def test_tool_choice_none_keeps_tools_out_of_the_prompt(scripted):
    running, client = scripted
    say(running, "ok")
    answer = client.chat.completions.create(
        model=MODEL, messages=WEATHER_CHAT, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert answer.usage.prompt_tokens == len(chat_ids(running.state.service, WEATHER_CHAT))


def test_reasoning_comes_back_as_reasoning_content(scripted):
    running, client = scripted
    say(running, "<|channel>thought\nweigh it<channel|>hello world")
    answer = client.chat.completions.create(model=MODEL, messages=WEATHER_CHAT)
    assert answer.choices[0].message.content == "hello world"
    assert answer.choices[0].message.model_extra["reasoning_content"] == "weigh it"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_answer_and_frees_the_slot(scripted, stream):
    running, client = scripted
    say(running, "hello world and then much more text that never comes out")
    if stream:
        chunks = list(client.completions.create(model=MODEL, prompt="x", stop=["world"], stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        answer = client.completions.create(model=MODEL, prompt="x", stop=["world"])
        text, finish = answer.choices[0].text, answer.choices[0].finish_reason
    assert (text, finish) == ("hello ", "stop")
    running.wait_idle()


def tokens_through(running, ids: list[int], stop: str) -> int:
    """How many of ``ids`` it takes for their text to contain ``stop``."""
    tokenizer = running.state.service.tokenizer
    return next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k]))


def generated_tokens(running) -> int:
    text = httpx.get(f"{running.url}/metrics", headers=AUTH).text
    (line,) = [line for line in text.splitlines() if line.startswith("gemma_mtp:generation_tokens_total ")]
    return int(line.split()[1])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chat", [False, True])
def test_usage_and_timings_count_tokens_only_up_to_the_stop_string(scripted, chat, stream):
    running, client = scripted
    ids = say(running, "hello world and then much more text that never comes out")
    n = tokens_through(running, ids, "world")
    assert n % ScriptedDecoder.ROUND, "the stop string must complete inside a round, not at its end"
    before = generated_tokens(running)
    kwargs = dict(model=MODEL, max_tokens=30, stop=["world"])
    if stream:
        kwargs |= dict(stream=True, stream_options={"include_usage": True})
    if chat:
        answer = client.chat.completions.create(messages=WEATHER_CHAT, **kwargs)
    else:
        answer = client.completions.create(prompt="x", **kwargs)
    if stream:
        chunks = list(answer)
        usage = chunks[-1].usage
        (final,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        finish, timings = final.choices[0].finish_reason, final.model_extra["timings"]
    else:
        usage, timings = answer.usage, answer.model_extra["timings"]
        finish = answer.choices[0].finish_reason
    assert finish == "stop"
    assert usage.completion_tokens == timings["predicted_n"] == n
    assert usage.total_tokens == usage.prompt_tokens + n
    running.wait_idle()
    assert generated_tokens(running) - before == n
