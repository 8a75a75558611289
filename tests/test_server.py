"""`gemma-mtp serve` end to end: the official `openai` client and raw HTTP against a server started
in this process (uvicorn in a thread, a free loopback port, `server_model.RunningServer`) on a tiny
random Gemma 4 target with its MTP assistant, a tokenizer and a chat template (`server_model`).

Outputs are random text, so answers are compared with our own library (the same greedy decode
through `BatchDecoder`, decoded and parsed like the server does) and with the same request run
alone. Errors are in test_server_errors.py, known (scripted) answers in test_server_scripted.py,
the `serve` command in test_server_command.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import pytest
import server_model
from server_model import AUTH, CTX, MODEL, RunningServer, server_settings

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from gemma_mtp.chat import parse_chat_output, render_chat  # noqa: E402
from gemma_mtp.engine.batch import BatchDecoder  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.server.service import Service  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def models(reference_models, tmp_path_factory) -> dict[str, Path]:
    return server_model.servable_models(reference_models, tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def server(models):
    with RunningServer(server_settings(models)) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server_model.API_KEY, timeout=60, max_retries=0)


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


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_greedy_answer_and_its_token_count(client, service, reference, stream):
    for i in range(40):  # a prompt whose greedy answer has text to cut in its middle
        prompt = f"hello world {i}"
        generated, _, text = reference(service.tokenizer.encode(prompt), 16)
        if len(text.strip()) >= 6:
            break
    else:
        pytest.fail("no prompt with a long enough answer")
    stop = text[len(text) // 2 :][:2]
    n = next(k for k in range(1, len(generated) + 1) if stop in service.tokenizer.decode(generated[:k]))
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    if stream:
        chunks = list(
            client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        )
        answer_text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        answer = client.completions.create(**kwargs)
        answer_text, usage = answer.choices[0].text, answer.usage
    assert answer_text == text[: text.find(stop)]
    assert usage.completion_tokens == n


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
