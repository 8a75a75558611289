"""`gemma-mtp serve` end to end: the official `openai` client and raw HTTP against a server started
in this process (uvicorn in a thread, a free loopback port) on a tiny random Gemma 4 target with its
MTP assistant, a tokenizer and a chat template (`server_model`).

Outputs are random text, so answers are compared with our own library (the same greedy decode
through `BatchDecoder`, decoded and parsed like the server does) and with the same request run
alone. Tool calls and stop strings need a known output: a second server commits a scripted answer
(`ScriptedDecoder`) instead of the model's, so everything after the decoder is exercised as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import server_model

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from gemma_mtp.chat import parse_chat_output, render_chat  # noqa: E402
from gemma_mtp.engine.batch import BatchDecoder  # noqa: E402
from gemma_mtp.errors import GemmaMTPError  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.server.app import create_app  # noqa: E402
from gemma_mtp.server.service import Service, load_service  # noqa: E402
from gemma_mtp.server.settings import ServerSettings  # noqa: E402
from gemma_mtp.server.worker import Worker  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "tiny-gemma"
CTX = 256
GREEDY = SamplingParams(temperature=0)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class RunningServer:
    """`create_app` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, settings: ServerSettings, loader=None) -> None:
        self.app = create_app(settings, loader=loader)
        self.state = self.app.state.server
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 60) -> RunningServer:
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/health").status_code != 200:
            assert self.state.error is None, f"loading failed: {self.state.error}"
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)
        return self

    @property
    def worker(self) -> Worker:
        return self.state.service.worker

    def wait_idle(self, timeout: float = 10) -> dict:
        """The worker's snapshot once no request holds a slot or waits for one."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.worker.snapshot()
            if snapshot["running"] == snapshot["waiting"] == snapshot["decoder_rows_in_use"] == 0:
                return snapshot
            assert time.monotonic() < deadline, f"slots still busy: {snapshot}"
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def settings(models: dict[str, Path], **overrides) -> ServerSettings:
    values = dict(
        model=str(models["target"]),
        model_draft=str(models["assistant"]),
        parallel=4,
        max_queue=12,
        api_key=API_KEY,
        alias=MODEL,
        ctx_size=CTX,
        spec=SpecOptions(type="mtp", n_max=3),
        dtype="float32",
        device="cpu",
    )
    return ServerSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def models(reference_models, tmp_path_factory) -> dict[str, Path]:
    target = reference_models.target("e2b").path
    assistant = reference_models.assistant("e2b", ordered=True).path
    copy = server_model.servable_copy(target, tmp_path_factory.mktemp("server") / "target")
    return {"target": copy, "assistant": assistant}


@pytest.fixture(scope="module")
def server(models):
    with RunningServer(settings(models)) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def service(server) -> Service:
    return server.state.service


@pytest.fixture(scope="module")
def reference(models, service):
    """Greedy decode of prompt ids by our library alone: (generated ids, parsed answer, completion text)."""
    engine_decoder = BatchDecoder(service.worker.decoder.target, max_batch=1, ctx_size=CTX)
    tokenizer, stop_ids = service.tokenizer, service.stop_ids

    def run(prompt_ids: list[int], n_predict: int):
        slot = engine_decoder.add(
            prompt_ids, n_predict=n_predict, sampling=GREEDY, spec=SpecOptions(), stop_ids=stop_ids
        )
        while not slot.done:
            engine_decoder.step()
        engine_decoder.release(slot)
        text = tokenizer.decode([t for t in slot.generated if t not in stop_ids])
        return slot.generated, parse_chat_output(text), text

    return run


def chat_ids(service: Service, messages: list[dict], **kwargs) -> list[int]:
    return service.tokenizer.encode(render_chat(service.tokenizer, messages, **kwargs))


@pytest.fixture(scope="module")
def chatty(service, reference) -> list[dict]:
    """A user message whose greedy answer is at least 4 tokens before the model ends its turn."""
    for i in range(40):
        messages = [{"role": "user", "content": f"hello world {i}"}]
        generated, _, _ = reference(chat_ids(service, messages), 16)
        if len(generated) >= 5:
            return messages
    pytest.fail("no prompt with a long enough answer")


# ---------------------------------------------------------------------------------------------
# the official client


def test_models_list_names_the_alias(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_equals_the_library_greedy_answer(client, service, reference, chatty):
    answer = client.chat.completions.create(model=MODEL, messages=chatty, max_tokens=16, temperature=0)
    prompt_ids = chat_ids(service, chatty)
    generated, parsed, _ = reference(prompt_ids, 16)
    message = answer.choices[0].message
    assert message.role == "assistant"
    assert (message.content or "") == parsed.content
    assert [c.function.name for c in message.tool_calls or []] == [
        c["function"]["name"] for c in parsed.tool_calls
    ]
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.completion_tokens == len(generated)
    timings = answer.model_extra["timings"]
    assert timings["prompt_n"] == len(prompt_ids) and timings["predicted_n"] == len(generated)
    assert timings["draft_n"] >= timings["draft_n_accepted"] >= 0


def test_streamed_chat_carries_role_first_then_the_same_answer_and_usage(client, chatty):
    whole = client.chat.completions.create(model=MODEL, messages=chatty, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=chatty,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completion_text_is_the_decoded_greedy_continuation(client, service, reference):
    answer = client.completions.create(model=MODEL, prompt="hello world", max_tokens=12, temperature=0)
    generated, _, text = reference(service.tokenizer.encode("hello world"), 12)
    assert answer.choices[0].text == text
    assert answer.usage.completion_tokens == len(generated)
    assert answer.choices[0].finish_reason == ("length" if len(generated) == 12 else "stop")


def test_speculation_per_request_changes_drafting_not_the_answer(client, chatty):
    def ask(speculative):
        body = {"speculative": speculative, "ignore_eos": True}
        return client.chat.completions.create(
            model=MODEL, messages=chatty, max_tokens=12, temperature=0, extra_body=body
        )

    plain = ask({"enabled": False})
    assert plain.model_extra["timings"]["draft_n"] == 0
    for speculative in ({"n_max": 2}, {"type": "ngram", "n_max": 4}, {"enabled": True}):
        answer = ask(speculative)
        assert answer.choices[0].message.content == plain.choices[0].message.content, speculative
    mtp = ask({"n_max": 2}).model_extra["timings"]
    assert mtp["draft_n"] > 0


def test_a_seed_makes_sampling_repeatable(client, chatty):
    def ask(seed: int) -> str:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=chatty,
            max_tokens=12,
            temperature=1.5,
            seed=seed,
            extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0.0},
        )
        return answer.choices[0].message.content

    first = ask(7)
    assert ask(7) == first
    assert any(ask(seed) != first for seed in (8, 9, 10))


def test_metrics_count_tokens_and_drafts_as_responses_report_them(server, client, chatty):
    def counters() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    before = counters()
    answer = client.chat.completions.create(
        model=MODEL, messages=chatty, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    after = counters()
    timings = answer.model_extra["timings"]

    def delta(name: str) -> float:
        return after.get(f"gemma_mtp:{name}", 0) - before.get(f"gemma_mtp:{name}", 0)

    assert delta("spec_decode_num_draft_tokens_total") == timings["draft_n"] > 0
    assert delta("spec_decode_num_accepted_tokens_total") == timings["draft_n_accepted"]
    by_position = sum(
        delta(f'spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}}') for i in range(3)
    )
    assert by_position == timings["draft_n_accepted"]
    assert delta("prompt_tokens_total") == answer.usage.prompt_tokens
    assert delta("generation_tokens_total") == answer.usage.completion_tokens
    assert delta('requests_total{endpoint="/v1/chat/completions"}') == 1
    assert after["gemma_mtp:num_slots"] == 4


# ---------------------------------------------------------------------------------------------
# continuous batching


async def stream_chat(http: httpx.AsyncClient, body: dict, *, disconnect_after: int | None = None):
    """The streamed answer as (content, reasoning, tool calls, finish reason); None when this client
    hung up after ``disconnect_after`` chunks."""
    content = reasoning = ""
    calls, finish, n = [], None, 0
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return content, reasoning, calls, finish
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                calls += [
                    (c["function"]["name"], c["function"]["arguments"]) for c in delta.get("tool_calls", [])
                ]
                finish = choice["finish_reason"] or finish
            n += 1
            if disconnect_after is not None and n >= disconnect_after:
                return None  # leaving the block closes the connection mid-stream
    raise AssertionError("the stream ended without [DONE]")


def concurrent_bodies(n: int) -> list[dict]:
    specs = [None, {"enabled": False}, {"type": "ngram", "n_max": 2}, {"n_max": 1}]
    bodies = []
    for i in range(n):
        body = {
            "messages": [{"role": "user", "content": f"hello {i}"}],
            "temperature": 0,
            "max_tokens": 12 + i % 5,
        }
        if specs[i % 4] is not None:
            body["speculative"] = specs[i % 4]
        if i % 2:
            body["ignore_eos"] = True
        bodies.append(body)
    return bodies


DISCONNECTING = {2, 7, 11, 14}


def test_concurrent_streams_equal_each_alone_and_leave_no_trace(server):
    bodies = concurrent_bodies(16)
    for i in DISCONNECTING:  # long answers: still running when their clients hang up
        bodies[i] = {**bodies[i], "max_tokens": 200, "ignore_eos": True}

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            alone = [None if i in DISCONNECTING else await stream_chat(http, b) for i, b in enumerate(bodies)]
            server.wait_idle()
            gc.collect()
            rss_before = psutil.Process().memory_info().rss
            together = await asyncio.gather(
                *(
                    stream_chat(http, body, disconnect_after=3 if i in DISCONNECTING else None)
                    for i, body in enumerate(bodies)
                )
            )
            return alone, together, rss_before

    alone, together, rss_before = asyncio.run(run())
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        if i in DISCONNECTING:
            assert b is None
        else:
            assert b == a, f"request {i}"
    snapshot = server.wait_idle()
    assert all(slot["state"] == "idle" for slot in snapshot["slots"])
    gc.collect()
    assert psutil.Process().memory_info().rss - rss_before < 64 * 2**20
    assert httpx.get(f"{server.url}/health").status_code == 200
    again = asyncio.run(_one_stream(server, bodies[0]))
    assert again == alone[0]


async def _one_stream(server, body, **kwargs):
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
        return await stream_chat(http, body, **kwargs)


def generated_tokens(server) -> int:
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    (line,) = [line for line in text.splitlines() if line.startswith("gemma_mtp:generation_tokens_total ")]
    return int(line.split()[1])


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_its_slot_at_once(server, stream):
    server.wait_idle()
    before = generated_tokens(server)
    # without max_tokens and with ignore_eos the answer would run to the end of the context
    body = {"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}
    budget = CTX - len(chat_ids(server.state.service, body["messages"]))
    if stream:
        assert asyncio.run(_one_stream(server, body, disconnect_after=2)) is None
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=0.1)
    server.wait_idle()
    assert generated_tokens(server) - before < budget // 2


def test_requests_beyond_slots_and_queue_get_429_until_slots_free(server):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            streams = [http.stream("POST", "/v1/chat/completions", json=body) for _ in range(4 + 12)]
            responses = [await s.__aenter__() for s in streams]  # headers back: every job is submitted
            assert [r.status_code for r in responses] == [200] * 16
            refused = await http.post("/v1/chat/completions", json={**body, "stream": False})
            for s in streams:
                await s.__aexit__(None, None, None)
            return refused

    refused = asyncio.run(run())
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    server.wait_idle()


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b'{"messages": [', None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature", "number"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, "max_tokens", "integer"),
        ({}, "messages", "required"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n", "n=1"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "speculative": {"n_max": 99}},
            "speculative.n_max",
            "16",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "speculative": {"type": "draft"}},
            "speculative.type",
            "-md",
        ),
    ],
)
def test_bad_chat_requests_get_400_naming_the_field(server, body, param, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert error["param"] == param
    assert words in error["message"]


def test_prompt_longer_than_the_context_gets_400_saying_what_to_change(server):
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": [5] * (CTX + 10)}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "exceed_context_size_error"
    assert "-c/--ctx-size" in error["message"] and error["n_ctx"] == CTX


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_missing_or_wrong_api_key_gets_401_but_health_needs_none(server, headers):
    response = httpx.get(f"{server.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_openai_client_sees_errors_and_the_server_keeps_serving(server, client, chatty):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=chatty, temperature=-1)
    assert info.value.body["param"] == "temperature"
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    assert httpx.get(f"{server.url}/v1/nothing", headers=AUTH).json()["error"]["code"] == 404
    assert client.chat.completions.create(model=MODEL, messages=chatty, max_tokens=2).choices


def test_health_is_503_while_loading_then_200(models):
    gate = threading.Event()

    def loader(metrics):
        gate.wait(30)
        return load_service(settings(models, parallel=1), metrics=metrics)

    with RunningServer(settings(models, parallel=1), loader=loader) as running:
        response = httpx.get(f"{running.url}/health")
        assert response.status_code == 503
        assert response.json()["error"] == {
            "message": "Loading model",
            "type": "unavailable_error",
            "code": 503,
            "param": None,
        }
        busy = httpx.post(f"{running.url}/v1/completions", json={"prompt": "hi"}, headers=AUTH)
        assert busy.status_code == 503
        gate.set()
        running.wait_ready()


def test_a_model_that_fails_to_load_is_reported_by_health(models):
    def loader(metrics):
        raise GemmaMTPError("model.safetensors: missing tensor x")

    with RunningServer(settings(models), loader=loader) as running:
        deadline = time.monotonic() + 10
        while running.state.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = httpx.get(f"{running.url}/health")
        assert response.status_code == 503
        assert "missing tensor x" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------
# a known answer: tool calls and stop strings


class ScriptedDecoder(BatchDecoder):
    """Commits ``script`` (three tokens a round, then <eos>) instead of the random model's tokens;
    prefill, slots and stop ids work as in `BatchDecoder`."""

    script: list[int] = []

    def step(self) -> dict[int, list[int]]:
        out = {}
        for slot in self.active():
            done = len(slot.generated)
            out[slot.row] = self._commit(slot, self.script[done : done + 3] or [1])
        return out


@pytest.fixture(scope="module")
def scripted(models):
    def loader(metrics):
        service = load_service(settings(models, parallel=1, max_queue=2, ctx_size=512), metrics=metrics)
        decoder = service.worker.decoder
        scripted = ScriptedDecoder(decoder.target, max_batch=1, ctx_size=512, drafters=decoder.drafters)
        service.worker = Worker(scripted, max_queue=2, metrics=metrics)
        return service

    with RunningServer(settings(models, parallel=1), loader=loader) as running:
        running.wait_ready()
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, timeout=60, max_retries=0)
        yield running, client


def say(running: RunningServer, text: str) -> None:
    """The scripted server's next answers: ``text`` (tokenized), then <|tool_response> if it ends a call."""
    tokenizer = running.state.service.tokenizer
    running.worker.decoder.script = tokenizer.encode(text, add_bos=False)


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


# ---------------------------------------------------------------------------------------------
# the command


def serve_process(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gemma_mtp.server", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_serve_command_loads_serves_and_stops_on_sigterm(models):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = serve_process(
        "-m", str(models["target"]), "-md", str(models["assistant"]), "--port", str(port), "-np", "2",
        "-c", "128", "--api-key", "k", "--alias", "cli-model", "--device", "cpu", "-t", "1",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.1)
        models_list = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"})
        assert models_list.json()["data"][0]["id"] == "cli-model"
        assert models_list.json()["data"][0]["meta"]["n_slots"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal: the exit is SIGTERM's default
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "ready on http://127.0.0.1" in stderr and "Traceback" not in stderr


def test_serve_command_that_cannot_load_exits_1_with_one_error_line(tmp_path):
    proc = serve_process("-m", str(tmp_path / "missing"), "--port", "0")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    errors = [line for line in stderr.splitlines() if "missing" in line and "no such file" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ")
