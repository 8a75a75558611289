"""Running llama.cpp's own tools from the build of scripts/build_llama_cpp.sh (for the fixture and
interop scripts; never imported by the package or the tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["llama_cpp_dir", "LlamaServer"]

VERSION = "0.3.36"


def llama_cpp_dir() -> Path:
    """Where build_llama_cpp.sh put its build ($GEMMA_MTP_CACHE or ~/.cache/gemma-mtp)."""
    cache = Path(os.environ.get("GEMMA_MTP_CACHE") or Path.home() / ".cache" / "gemma-mtp")
    return cache / "llama.cpp" / VERSION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`llama-server` on one model (with an MTP drafter when `drafter` is given), greedy only."""

    def __init__(self, llama: Path, model: Path, drafter: Path | None = None, *, n_max: int = 3) -> None:
        self.port = _free_port()
        self.cmd = [str(llama / "bin" / "llama-server"), "-m", str(model), "--host", "127.0.0.1"]
        self.cmd += ["--port", str(self.port), "-c", "256", "-t", "2", "-np", "1", "--no-webui"]
        # an F32 KV cache: llama.cpp's default f16 cache alone moves tiny models' log-probs by ~1e-2
        self.cmd += ["-ctk", "f32", "-ctv", "f32"]
        if drafter is not None:
            self.cmd += ["-md", str(drafter), "--spec-type", "draft-mtp", "--spec-draft-n-max", str(n_max)]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LlamaServer:
        log = open(self.log, "w")  # noqa: SIM115 - kept open for the server's lifetime
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"llama-server did not come up: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def post(self, route: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            return json.loads(r.read())

    def greedy(self, prompt: list[int], n_predict: int, top_k: int) -> tuple[list[int], list[list]]:
        """(tokens, per generated position [[id, logprob], ...] of the top_k) along its greedy path."""
        body = {
            "prompt": prompt,
            "n_predict": n_predict,
            "temperature": 0.0,
            "top_k": 1,
            "n_probs": top_k,
            "ignore_eos": True,
            "cache_prompt": False,
            "return_tokens": True,
        }
        out = self.post("/completion", body)
        top = [
            [[p["id"], round(p["logprob"], 6)] for p in step["top_logprobs"]]
            for step in out.get("completion_probabilities", [])
        ]
        return list(out["tokens"]), top
