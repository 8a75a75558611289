"""`gemma-mtp serve`'s errors: OpenAI-shaped bodies naming the field, the model or the key at
fault, 503 while the model loads or after it failed, and a server that keeps serving after them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import server_model
from server_model import API_KEY, AUTH, CTX, MODEL, RunningServer, server_settings

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gemma_mtp.errors import GemmaMTPError  # noqa: E402
from gemma_mtp.server.service import load_service  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def models(reference_models, tmp_path_factory) -> dict[str, Path]:
    return server_model.servable_models(reference_models, tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def server(models):
    with RunningServer(server_settings(models, parallel=1)) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=60, max_retries=0)


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


def test_openai_client_sees_errors_and_the_server_keeps_serving(server, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, temperature=-1)
    assert info.value.body["param"] == "temperature"
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    assert httpx.get(f"{server.url}/v1/nothing", headers=AUTH).json()["error"]["code"] == 404
    assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).choices


def test_health_is_503_while_loading_then_200(models):
    gate = threading.Event()

    def loader(metrics):
        gate.wait(30)
        return load_service(server_settings(models, parallel=1), metrics=metrics)

    with RunningServer(server_settings(models, parallel=1), loader=loader) as running:
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

    with RunningServer(server_settings(models), loader=loader) as running:
        deadline = time.monotonic() + 10
        while running.state.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = httpx.get(f"{running.url}/health")
        assert response.status_code == 503
        assert "missing tensor x" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", {"messages": HI}), ("/v1/completions", {"prompt": "hi"})],
)
def test_an_unknown_model_gets_404_naming_it_and_the_served_one(server, path, body):
    response = httpx.post(
        f"{server.url}{path}", json={**body, "model": "gpt-4o", "max_tokens": 1}, headers=AUTH
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == 404 and error["type"] == "invalid_request_error" and error["param"] == "model"
    assert "`gpt-4o` does not exist" in error["message"] and f"serves `{MODEL}`" in error["message"]


def test_the_openai_client_sees_an_unknown_model_as_not_found(client):
    with pytest.raises(openai.NotFoundError, match=MODEL):
        client.chat.completions.create(model=f"{MODEL}-other", messages=HI, max_tokens=1)


@pytest.mark.parametrize("model", [None, "", "listed"])
def test_the_listed_model_or_none_is_served(server, model):
    listed = [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]]
    body = {"prompt": "hi", "max_tokens": 1}
    if model is not None:
        body["model"] = listed[0] if model == "listed" else model
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL == listed[0]
