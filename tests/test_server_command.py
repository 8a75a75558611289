"""The `gemma-mtp serve` command in a subprocess (and in process where nothing is served): it loads,
serves and stops on SIGTERM, and a model that cannot load or a port that is taken is one error line
with exit code 1."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import server_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def models(reference_models, tmp_path_factory) -> dict[str, Path]:
    return server_model.servable_models(reference_models, tmp_path_factory.mktemp("server"))


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


def test_serve_on_a_busy_port_exits_1_with_one_error_line_before_loading(monkeypatch, capsys):
    from gemma_mtp.cli.main import main

    loads = []
    monkeypatch.setattr("gemma_mtp.server.service.load_service", lambda *a, **k: loads.append(a))
    with socket.socket() as other:  # another server on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code = main(["serve", "-m", "model.gguf", "--port", str(port)])
    stderr = capsys.readouterr().err
    assert code == 1
    assert stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use ({os.strerror(errno.EADDRINUSE)}); pass --port with a free "
        "port or stop the other server"
    ]
    assert loads == []
