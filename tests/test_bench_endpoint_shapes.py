"""`bench --endpoint` on llama-server's real responses: a stub on the loopback interface replays what
the vendored llama-server (llama-cpp-python 0.3.36's llama.cpp, `--metrics`, draft-simple with the
270M as its own draft) sent for one streamed completion, one streamed chat completion and /metrics
(tests/fixtures/llama_server/, recorded once). Its timings sit in the last chunk beside a
`finish_reason` choice (completions) or in a `choices: []` usage chunk (chat); its counters are
`llamacpp:spec_decode_*` and `/metrics` answers 501 without `--metrics`."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gemma_mtp.bench.endpoint import EndpointConfig, parse_metrics, run_endpoint_bench, spec_counters

RECORDED = Path(__file__).parent / "fixtures" / "llama_server"


def _scaled(text: str, times: int) -> str:
    """The recorded counters as after `times` identical requests."""
    return re.sub(
        r"^(llamacpp:spec_decode_\S+) (\d+)$",
        lambda m: f"{m.group(1)} {int(m.group(2)) * times}",
        text,
        flags=re.M,
    )


class _Replay(BaseHTTPRequestHandler):
    served = 0
    metrics = True
    paths: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if not type(self).metrics:
            body = b'{"error":{"code":501,"message":"This server does not support metrics endpoint."}}'
            return self._send(501, "application/json", body)
        text = _scaled((RECORDED / "metrics.txt").read_text(), type(self).served)
        self._send(200, "text/plain; version=0.0.4", text.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).paths.append(self.path)
        type(self).served += 1
        name = "chat_stream.txt" if self.path == "/v1/chat/completions" else "completions_stream.txt"
        self._send(200, "text/event-stream", (RECORDED / name).read_bytes())

    def _send(self, code: int, kind: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def replay(tmp_path):
    _Replay.served, _Replay.metrics, _Replay.paths = 0, True, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"category": "code", "prompt": "def fib(n):"}\n')
    yield f"http://127.0.0.1:{server.server_address[1]}", str(prompts)
    server.shutdown()
    server.server_close()


def _final_timings(name: str) -> dict:
    frames = [
        line[5:].strip() for line in (RECORDED / name).read_text().splitlines() if line.startswith("data:")
    ]
    return next(json.loads(f)["timings"] for f in reversed(frames) if f != "[DONE]" and "timings" in f)


def test_the_recorded_metrics_parse_as_llama_cpps_counters():
    counters = spec_counters(parse_metrics((RECORDED / "metrics.txt").read_text()))
    assert (counters["drafted"], counters["accepted"], counters["rounds"]) == (5, 5, 2)
    assert counters["by_position"] == {0: 2, 1: 2, 2: 1}


@pytest.mark.parametrize("with_metrics", [True, False], ids=["--metrics", "no-metrics"])
def test_completions_from_llama_server(replay, with_metrics):
    url, prompts = replay
    _Replay.metrics = with_metrics
    rows = run_endpoint_bench(
        EndpointConfig(endpoints=(url,), reps=2, prompts=prompts, n_predict=8, temperature=0)
    )
    row = next(r for r in rows if r["category"] == "all")
    timings = _final_timings("completions_stream.txt")
    assert row["timing_source"] == "server"
    # its own rate: predicted_per_second counts the tokens after the first (7 of predicted_n 8)
    assert row["tokens_per_s"] == pytest.approx(timings["predicted_per_second"], rel=1e-3)
    assert row["n_decoded"] == 2 * (timings["predicted_n"] - 1)

    assert (row["drafted"], row["accepted"]) == (2 * timings["draft_n"], 2 * timings["draft_n_accepted"])
    assert row["acceptance"] == pytest.approx(1.0)
    if with_metrics:  # per position from the counters' differences; rounds from num_drafts
        assert row["mean_accepted_length"] == pytest.approx(1 + 5 / 2)
        assert row["acceptance_by_position"] == pytest.approx([1.0, 1.0, 0.5])
    else:
        assert row["acceptance_by_position"] == [] and row["mean_accepted_length"] is None
    assert set(_Replay.paths) == {"/v1/completions"}


def test_chat_completions_from_llama_server(replay):
    url, prompts = replay
    config = EndpointConfig(endpoints=(url,), reps=1, prompts=prompts, n_predict=6, temperature=0, chat=True)
    row = next(r for r in run_endpoint_bench(config) if r["category"] == "all")
    timings = _final_timings("chat_stream.txt")
    assert set(_Replay.paths) == {"/v1/chat/completions"}
    assert row["tokens_per_s"] == pytest.approx(timings["predicted_per_second"], rel=1e-2)
    assert (row["drafted"], row["accepted"]) == (timings["draft_n"], timings["draft_n_accepted"])
