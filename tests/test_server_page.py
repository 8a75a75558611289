"""The chat page's server side: ``GET /`` and its static files, and the opt-in ``x_speculation``
field of streamed chunks (``"return_speculation": true``), on the tiny random Gemma 4 pair
(`server_model`) and on a scripted decoder whose rounds accept a known number of drafts.

The page itself runs in a real browser in test_server_page_browser.py; its JavaScript in
test_server_page_js.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import server_model
from server_model import AUTH, MODEL, RunningServer, ScriptedDecoder, server_settings

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from gemma_mtp.engine.scheduler import Tokens  # noqa: E402
from gemma_mtp.server.page import STATIC_DIR  # noqa: E402
from gemma_mtp.server.speculation import FIELD, SpecTally  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"draft", "target", "drafted", "accepted", "rounds"}


@pytest.fixture(scope="module")
def models(reference_models, tmp_path_factory) -> dict[str, Path]:
    return server_model.servable_models(reference_models, tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def server(models):
    with RunningServer(server_settings(models, parallel=2)) as running:
        yield running.wait_ready()


def stream_chunks(server, body: dict) -> list[dict]:
    """The data of every SSE event of a streamed chat completion, [DONE] left out."""
    body = {"model": MODEL, "stream": True, "temperature": 0, **body}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def content(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def totals(chunks: list[dict]) -> dict[str, int]:
    out = dict.fromkeys(KEYS, 0)
    for chunk in chunks:
        for key, value in chunk.get(FIELD, {}).items():
            out[key] += value
    return out


MESSAGES = [{"role": "user", "content": "hello world"}]
OPTIONS = {"max_tokens": 14, "ignore_eos": True, "stream_options": {"include_usage": True}}


# -- the page ----------------------------------------------------------------------------------
def test_the_page_is_served_without_a_key_and_forbids_inline_script(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    for name in ("app.js", "sse.js", "marks.js", "markdown.js", "answer.js", "api.js", "style.css"):
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 200, name
        if name.endswith(".js"):
            assert response.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/static/nothing.js").status_code == 404
    assert httpx.get(f"{server.url}/v1/models").status_code == 401  # the API still needs the key


def test_every_static_file_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [
        p.removeprefix("server/static/") for p in patterns["gemma_mtp"] if p.startswith("server/static/")
    ]
    files = [path for path in STATIC_DIR.iterdir() if path.is_file()]
    assert files
    for path in files:
        assert any(path.match(pattern) for pattern in shipped), f"{path.name} is not in package-data"


# -- the stream field ----------------------------------------------------------------------------
def test_chunks_carry_no_speculation_field_unless_asked(server):
    for body in ({}, {"return_speculation": False}):
        chunks = stream_chunks(server, {"messages": MESSAGES, **OPTIONS, **body})
        assert not any(FIELD in chunk for chunk in chunks)
    whole = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 4, "return_speculation": True},
        headers=AUTH,
        timeout=60,
    ).json()
    assert FIELD not in whole  # a stream-only field


@pytest.mark.parametrize("speculative", [{"n_max": 3}, {"type": "ngram", "n_max": 2}, {"enabled": False}])
def test_speculation_counts_add_up_to_usage_and_timings(server, speculative):
    body = {"messages": MESSAGES, **OPTIONS, "speculative": speculative}
    plain = stream_chunks(server, body)
    chunks = stream_chunks(server, {**body, "return_speculation": True})
    assert content(chunks) == content(plain)  # token-by-token text equals the usual chunks
    for chunk in chunks[1:]:  # every chunk after the role one, text or final
        if chunk["choices"]:
            assert set(chunk[FIELD]) == KEYS, chunk
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    timings, usage = final["timings"], chunks[-1]["usage"]
    sums = totals(chunks)
    assert sums["draft"] + sums["target"] == usage["completion_tokens"] == 14
    assert sums["drafted"] == timings["draft_n"] and sums["accepted"] == timings["draft_n_accepted"]
    assert sums["draft"] <= sums["accepted"]
    if speculative.get("enabled") is False:
        assert sums["drafted"] == sums["draft"] == sums["rounds"] == 0
    else:
        assert sums["drafted"] > 0 and 0 < sums["rounds"] <= sums["target"]


def test_the_openai_client_reads_chunks_with_the_field(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server_model.API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"return_speculation": True, "ignore_eos": True},
    )
    chunks = list(stream)
    assert sum(sum(c.model_extra[FIELD][k] for k in ("draft", "target")) for c in chunks[1:]) == 6


# -- exact marks from a scripted decoder ---------------------------------------------------------
class AcceptingDecoder(ScriptedDecoder):
    """Commits the script three tokens a round, reporting each round as 3 drafted and all but the
    last committed token accepted (as a real round: accepted drafts, then the target's token)."""

    def step(self) -> dict[int, list[int]]:
        out = super().step()
        for slot in self.active() + [s for s in self.slots if s is not None and s.done]:
            if slot.row in out:
                slot.last_round = (3, len(out[slot.row]) - 1)
                slot.stats.record(*slot.last_round)
        return out


@pytest.fixture(scope="module")
def scripted(models):
    from gemma_mtp.server.service import load_service
    from gemma_mtp.server.worker import Worker

    def loader(metrics):
        service = load_service(server_settings(models, parallel=1, max_queue=2), metrics=metrics)
        decoder = service.worker.decoder
        accepting = AcceptingDecoder(decoder.target, max_batch=1, ctx_size=256, drafters=decoder.drafters)
        service.worker = Worker(accepting, max_queue=2, metrics=metrics)
        return service

    with RunningServer(server_settings(models, parallel=1), loader=loader) as running:
        yield running.wait_ready()


def test_each_token_is_marked_by_how_its_round_made_it(scripted):
    ids = server_model.say(scripted, "abcdefgh")  # one token a character in the tiny vocabulary
    assert len(ids) == 8
    chunks = stream_chunks(scripted, {"messages": MESSAGES, "max_tokens": 20, "return_speculation": True})
    pieces = [(c["choices"][0]["delta"].get("content"), c[FIELD]) for c in chunks[1:] if c["choices"]]
    text_pieces = [(text, counts) for text, counts in pieces if text]
    assert "".join(text for text, _ in text_pieces) == "abcdefgh"
    kinds = ["draft" if counts["draft"] else "target" for _, counts in text_pieces]
    # rounds: abc, def, gh, <eos>: the accepted drafts, then the target's token
    assert kinds == ["draft", "draft", "target"] * 2 + ["draft", "target"]
    assert all(counts["draft"] + counts["target"] == 1 for _, counts in text_pieces)
    # the <eos> (a target token with no text) is counted on the final chunk
    assert pieces[-1][0] is None and pieces[-1][1]["target"] == 1
    assert totals(chunks) == {"draft": 5, "target": 4, "drafted": 12, "accepted": 5, "rounds": 4}


def test_a_round_cut_short_counts_only_the_drafts_it_committed():
    tally = SpecTally()
    assert [d for _, d in tally.tokens(Tokens([5, 6, 7], drafted=3, accepted=2))] == [True, True, False]
    assert [d for _, d in tally.tokens(Tokens([8], drafted=3, accepted=3))] == [True]  # cut at the budget
    assert tally.take() == {"draft": 3, "target": 1, "drafted": 6, "accepted": 5, "rounds": 2}
    assert tally.take() == dict.fromkeys(KEYS, 0)
    assert [d for _, d in tally.tokens(Tokens([9]))] == [False]  # a plain round
    assert tally.take()["rounds"] == 0


def test_streamed_completions_carry_the_field_too(server):
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 10, "ignore_eos": True, "stream": True}
    body |= {"temperature": 0, "return_speculation": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    sums = totals(chunks)
    assert sums["draft"] + sums["target"] == chunks[-1]["usage"]["completion_tokens"] == 10
    assert sums["drafted"] == next(c["timings"]["draft_n"] for c in chunks if "timings" in c)


def test_token_by_token_parsing_gives_the_same_reasoning_content_and_tool_calls(scripted):
    server_model.say(
        scripted,
        '<|channel>thought\nweigh it<channel|>Let me look.<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}'
        "<tool_call|>",
    )

    def parts(chunks: list[dict]) -> dict:
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        calls = [call["function"] for d in deltas for call in d.get("tool_calls") or []]
        return {
            "reasoning": "".join(d.get("reasoning_content") or "" for d in deltas),
            "content": "".join(d.get("content") or "" for d in deltas),
            "calls": calls,
            "finish": [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1],
        }

    body = {"messages": MESSAGES, "max_tokens": 80}
    plain = parts(stream_chunks(scripted, body))
    marked = stream_chunks(scripted, {**body, "return_speculation": True})
    assert parts(marked) == plain
    assert plain["reasoning"] == "weigh it" and plain["content"] == "Let me look."
    assert plain["calls"][0]["name"] == "get_weather" and plain["finish"] == "tool_calls"
    final = next(c for c in marked if c["choices"] and c["choices"][0]["finish_reason"])
    sums = totals(marked)
    assert sums["draft"] + sums["target"] == final["timings"]["predicted_n"]
