"""A tiny Gemma 4 checkpoint that a server can run: weights, tokenizer.json and a chat template,
and what the server tests share: `RunningServer` (uvicorn in a thread), their settings, and a
decoder that commits a scripted answer.

The weights are the reference suite's tiny random e2b-like target (``hf_reference``); next to them
we write a 256-token Gemma 4-style vocabulary (special tokens at Gemma 4's ids, ASCII characters,
a few merges) and a small Gemma 4-style chat template that renders a system turn, tool
declarations, tool calls and tool results. Outputs are random text: tests compare the server
with our own library calls, never with fixed strings.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
import time
from pathlib import Path

from gemma_mtp.cli.spec_args import SpecFlags
from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.server.settings import ServerSettings
from gemma_mtp.tokenizer import Tokenizer, tokenizer_from_gguf_metadata

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "tiny-gemma"  # the servers' --alias
CTX = 256

# Gemma 4's special tokens at their real ids: text, GGUF token type (3 control: left out of decoded
# text; 4 user-defined: kept, so the chat output parser sees them; 2 unknown).
SPECIAL_TOKENS = {
    0: ("<pad>", 3),
    1: ("<eos>", 3),
    2: ("<bos>", 3),
    3: ("<unk>", 2),
    4: ("<mask>", 3),
    46: ("<|tool>", 3),
    47: ("<tool|>", 3),
    48: ("<|tool_call>", 4),
    49: ("<tool_call|>", 4),
    50: ("<|tool_response>", 4),
    51: ("<tool_response|>", 4),
    52: ('<|"|>', 4),
    98: ("<|think|>", 3),
    100: ("<|channel>", 4),
    101: ("<channel|>", 4),
    105: ("<|turn>", 3),
    106: ("<turn|>", 3),
}
WORDS = ("user", "model", "system", "thought", "call", "\u2581hello", "hello", "\u2581world", "ing")

TEMPLATE = """{{- bos_token -}}
{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else none -%}
{%- if enable_thinking or system is not none or tools -%}
{{- '<|turn>system\\n' -}}
{%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
{%- if system is not none -%}{{- system | trim -}}{%- endif -%}
{%- for tool in tools or [] -%}
{{- '<|tool>declaration:' + tool['function']['name'] + (tool['function'] | tojson) + '<tool|>' -}}
{%- endfor -%}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'tool' -%}
{{- '<|tool_response>response:' + (message['name'] or 'tool') + '{value:<|"|>' + message['content'] -}}
{{- '<|"|>}<tool_response|>' -}}
{%- else -%}
{{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}
{%- for call in message['tool_calls'] or [] -%}
{{- '<|tool_call>call:' + call['function']['name'] + (call['function']['arguments'] | tojson) -}}
{{- '<tool_call|>' -}}
{%- endfor -%}
{{- (message['content'] or '') | trim -}}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""


def tiny_tokenizer(vocab_size: int = 256, *, specials: dict[int, tuple[str, int]] | None = None) -> Tokenizer:
    """A Gemma 4-style BPE vocabulary: specials at Gemma 4's ids (and ``specials``), ASCII
    characters, a few merges."""
    specials = {**SPECIAL_TOKENS, **(specials or {})}
    normal = ["\n", "\u2581", *(chr(c) for c in range(33, 127))]
    merges = []
    for word in WORDS:
        for end in range(2, len(word) + 1):
            if word[:end] not in normal:
                normal.append(word[:end])
                merges.append(f"{word[: end - 1]} {word[end - 1]}")
    pieces = iter(normal)
    tokens, types = [], []
    for token_id in range(vocab_size):
        text, kind = specials.get(token_id) or (next(pieces, None), 1)
        if text is None:
            text, kind = f"<unused{token_id}>", 3
        tokens.append(text)
        types.append(kind)
    metadata = {
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
    }
    return tokenizer_from_gguf_metadata(metadata, source="tiny")


def write_tokenizer(
    model_dir: Path,
    *,
    template: str | None = TEMPLATE,
    vocab_size: int = 256,
    extra_specials: dict | None = None,
) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` into ``model_dir``
    (ids past the characters and merges are unused control tokens, left out of decoded text)."""
    tiny_tokenizer(vocab_size, specials=extra_specials).backend.save(str(model_dir / "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(specials))
    if template is not None:
        (model_dir / "chat_template.jinja").write_text(template)


def servable_copy(checkpoint: Path, dst: Path) -> Path:
    """A copy of a tiny checkpoint with the tokenizer and chat template written next to it."""
    shutil.copytree(checkpoint, dst)
    write_tokenizer(dst)
    return dst


def servable_models(reference_models, root: Path) -> dict[str, Path]:
    """The reference suite's tiny e2b target (made servable under ``root``) and its MTP assistant."""
    target = reference_models.target("e2b").path
    assistant = reference_models.assistant("e2b", ordered=True).path
    return {"target": servable_copy(target, root / "target"), "assistant": assistant}


def server_settings(models: dict[str, Path], **overrides) -> ServerSettings:
    load = LoadOptions(
        model=str(models["target"]),
        model_draft=str(models["assistant"]),
        ctx_size=CTX,
        dtype="float32",
        device="cpu",
    )
    load = dataclasses.replace(load, **{k: overrides.pop(k) for k in list(overrides) if hasattr(load, k)})
    values = dict(
        load=load,
        parallel=4,
        max_queue=12,
        api_key=API_KEY,
        alias=MODEL,
        spec=SpecFlags(type="mtp", n_max=3),
    )
    return ServerSettings(**{**values, **overrides})


class RunningServer:
    """`create_app` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, settings: ServerSettings, loader=None) -> None:
        import uvicorn

        from gemma_mtp.server.app import create_app

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
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/health").status_code != 200:
            assert self.state.error is None, f"loading failed: {self.state.error}"
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)
        return self

    @property
    def worker(self):
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


class ScriptedDecoder(BatchDecoder):
    """Commits ``script`` (three tokens a round, then <eos>) instead of the random model's tokens;
    prefill, slots and stop ids work as in `BatchDecoder`."""

    script: list[int] = []
    ROUND = 3

    def step(self) -> dict[int, list[int]]:
        out = {}
        for slot in self.active():
            done = len(slot.generated)
            out[slot.row] = self._commit(slot, self.script[done : done + self.ROUND] or [1])
        return out


def scripted_server(models: dict[str, Path]) -> RunningServer:
    """A one-slot server whose worker runs a `ScriptedDecoder` (set its answer with `say`)."""
    from gemma_mtp.server.service import load_service
    from gemma_mtp.server.worker import Worker

    def loader(metrics):
        service = load_service(
            server_settings(models, parallel=1, max_queue=2, ctx_size=512), metrics=metrics
        )
        decoder = service.worker.decoder
        scripted = ScriptedDecoder(decoder.target, max_batch=1, ctx_size=512, drafters=decoder.drafters)
        service.worker = Worker(scripted, max_queue=2, metrics=metrics)
        return service

    return RunningServer(server_settings(models, parallel=1), loader=loader)


def say(running: RunningServer, text: str) -> list[int]:
    """The scripted server's next answers: ``text``, tokenized (the ids are returned)."""
    tokenizer = running.state.service.tokenizer
    running.worker.decoder.script = tokenizer.encode(text, add_bos=False)
    return running.worker.decoder.script
