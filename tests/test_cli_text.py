"""`gemma-mtp run` and `chat` end to end on a tiny Gemma 4 with a real (tiny) tokenizer and template.

The model is the tiny random e2b-like checkpoint of the reference suite; next to it we write a
256-token Gemma 4-style vocabulary (the special tokens at Gemma 4's ids) and a small Gemma 4-style
chat template. Outputs are random text, so the tests compare the CLI with our own library calls:
the JSON text against `Tokenizer.decode`, prompt lengths against the rendered and encoded chat.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import hf_reference as ref
import pytest

import gemma_mtp
from gemma_mtp.chat import ChatEvent, ChatTemplate, parse_chat_output, render_chat
from gemma_mtp.cli.args import ChatOptions
from gemma_mtp.cli.chat import AnswerView, ChatSession
from gemma_mtp.cli.main import main
from gemma_mtp.engine.results import Result
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_gguf_metadata

# Gemma 4's special tokens at their real ids (llama.cpp's ggml-vocab-gemma-4.gguf): text, GGUF type
# (3 control: dropped from decoded text; 4 user-defined: kept, so the output parser sees them).
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
WORDS = ("user", "model", "system", "thought", "\u2581hello", "hello", "\u2581world", "ing")
# Gemma 4's template reduced to what these tests use: system turn, <|think|>, empty thought channel.
TEMPLATE = """{{- bos_token -}}
{%- if enable_thinking or messages[0]['role'] == 'system' -%}
{{- '<|turn>system\\n' -}}
{%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] | trim -}}{%- endif -%}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}
{{- message['content'] | trim -}}
{{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""
N_PREDICT = "8"


def tiny_tokenizer(vocab_size: int = ref.VOCAB) -> Tokenizer:
    """A Gemma 4-style BPE vocabulary: specials at Gemma 4's ids, ASCII characters, a few merges."""
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
        text, kind = SPECIAL_TOKENS.get(token_id) or (next(pieces, None), 1)
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


def write_tokenizer(model_dir: Path, *, template: str | None = TEMPLATE) -> None:
    tiny_tokenizer().backend.save(str(model_dir / "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(specials))
    if template is not None:
        (model_dir / "chat_template.jinja").write_text(template)


@pytest.fixture(scope="module")
def model_dir(reference_models, tmp_path_factory) -> Path:
    source = reference_models.target("e2b").path
    path = ref.copy_checkpoint(source, tmp_path_factory.mktemp("cli_text") / "model")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return load_tokenizer(model_dir)


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemma_mtp.cli.main", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        env={**ref.subprocess_env(), "PYTHONIOENCODING": "utf-8"},
    )


def greedy(model_dir: Path, *flags: str) -> tuple[str, ...]:
    return ("-m", str(model_dir), "-n", N_PREDICT, "--temp", "0", "--device", "cpu", *flags)


@pytest.fixture(scope="module")
def run_json(model_dir: Path) -> dict:
    proc = cli("run", *greedy(model_dir, "-p", "hello world", "--json"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def text_of(result: dict | Result, tokenizer: Tokenizer) -> str:
    """The text a result should carry: its ids decoded, without the stop token that ended it."""
    get = result.get if isinstance(result, dict) else lambda key: getattr(result, key)
    ids = get("token_ids")
    return tokenizer.decode(ids[:-1] if get("stop_reason") == "eos" else ids)


def render(tokenizer: Tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return tokenizer.encode(render_chat(tokenizer, messages, **kwargs))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------- run


def test_run_json_text_is_the_decoded_token_ids(run_json: dict, tokenizer: Tokenizer):
    assert run_json["n_generated"] == len(run_json["token_ids"]) > 0
    assert run_json["text"] == text_of(run_json, tokenizer)
    assert run_json["n_prompt"] == len(tokenizer.encode("hello world"))


def test_run_streams_the_text_it_reports_and_summarises_on_stderr(
    model_dir: Path, run_json: dict, tmp_path: Path
):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello world", encoding="utf-8")
    proc = cli("run", *greedy(model_dir, "-f", str(prompt)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run_json["text"] + "\n"
    load_line, summary = proc.stderr.splitlines()
    assert load_line.startswith(f"loaded {model_dir}: gemma4, HF safetensors, float32, cpu, ")
    assert summary.startswith(f"{run_json['n_generated']} tokens in ") and summary.endswith(" tok/s")


def test_run_chat_renders_the_template_around_the_prompt(model_dir: Path, tokenizer: Tokenizer):
    proc = cli("run", *greedy(model_dir, "--chat", "-sys", "be brief", "-p", "hello", "--json"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    messages = [{"role": "system", "content": "be brief"}, user("hello")]
    assert result["n_prompt"] == len(render(tokenizer, messages))
    assert result["text"] == text_of(result, tokenizer)


def test_reasoning_on_reaches_the_template(model_dir: Path, tokenizer: Tokenizer, capsys):
    assert main(["run", *greedy(model_dir, "--reasoning", "on", "-p", "hello", "--json", "-q")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_prompt"] == len(render(tokenizer, [user("hello")], enable_thinking=True))
    assert result["n_prompt"] != len(render(tokenizer, [user("hello")]))


def test_chat_template_file_replaces_the_model_template(
    model_dir: Path, tokenizer: Tokenizer, tmp_path, capsys
):
    template = tmp_path / "plain.jinja"
    template.write_text("{{ bos_token }}{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    argv = greedy(model_dir, "--chat-template-file", str(template), "-p", "hello", "--json", "-q")
    assert main(["run", *argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_prompt"] == len(tokenizer.encode("<bos>Q: hello\nA:"))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_progress_bar_while_loading(model_dir: Path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["run", *greedy(model_dir, "-p", "hello")]) == 0
    err = sys.stderr.getvalue()
    assert "loading:" in err and "tensor" in err
    assert f"loaded {model_dir}: gemma4" in err


@pytest.mark.parametrize("flags", [["--json"], ["-q"]])
def test_json_and_quiet_get_no_progress_bar(flags, model_dir: Path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["run", *greedy(model_dir, "-p", "hello", *flags)]) == 0
    assert "loading:" not in sys.stderr.getvalue()


# --------------------------------------------------------------------------- the engine with a tokenizer


@pytest.fixture(scope="module")
def engine(model_dir: Path, tokenizer: Tokenizer):
    engine = gemma_mtp.load(model_dir, dtype="float32", device="cpu")
    engine.tokenizer = tokenizer
    return engine


def test_engine_takes_text_and_streams_the_text_of_its_result(engine, tokenizer: Tokenizer):
    result = Result()
    greedy_params = SamplingParams(temperature=0)
    steps = list(engine.stream("hello world", n_predict=12, sampling=greedy_params, result=result))
    assert result.n_prompt == len(tokenizer.encode("hello world"))
    assert "".join(step.text for step in steps) == result.text == text_of(result, tokenizer)
    assert engine.generate("hello world", n_predict=12, sampling=greedy_params).text == result.text


def test_engine_stops_on_the_tokenizer_stop_ids_and_leaves_them_out_of_the_text(
    engine, tokenizer: Tokenizer, monkeypatch
):
    every_id_stops = Tokenizer(tokenizer.backend, bos_id=2, eos_id=1, stop_ids=range(ref.VOCAB))
    monkeypatch.setattr(engine, "tokenizer", every_id_stops)
    result = Result()
    steps = list(engine.stream("hello", n_predict=12, sampling=SamplingParams(temperature=0), result=result))
    assert (result.n_generated, result.stop_reason) == (1, "eos")
    assert result.text == steps[0].text == ""  # the stop token is not part of the text


# --------------------------------------------------------------------------- chat


def test_chat_keeps_history_resets_and_exits(model_dir: Path, tokenizer: Tokenizer):
    script = "hello\nmore please\n/reset\nhello\n/exit\nnever answered\n"
    proc = cli("chat", *greedy(model_dir, "--spec-type", "ngram"), stdin=script)
    assert proc.returncode == 0, proc.stderr
    statuses = [line for line in proc.stderr.splitlines() if line.startswith("[prompt ")]
    assert len(statuses) == 3, proc.stderr
    assert all("tok/s, draft acceptance " in line for line in statuses)
    assert "[history cleared]" in proc.stderr
    n_prompts = [int(line.split()[1]) for line in statuses]

    # The first answer, as chat kept it in its history: run on the same prompt is the same generation.
    first = cli("run", *greedy(model_dir, "--chat", "-p", "hello", "--json", "-q"))
    answer = parse_chat_output(json.loads(first.stdout)["text"]).content
    history = [user("hello"), {"role": "assistant", "content": answer}, user("more please")]
    assert n_prompts == [
        len(render(tokenizer, [user("hello")])),
        len(render(tokenizer, history)),
        len(render(tokenizer, [user("hello")])),  # after /reset, the first turn again
    ]
    # Answers stream to stdout one after another; the third repeats the first.
    assert proc.stdout.startswith(answer + "\n") and proc.stdout.endswith("\n" + answer + "\n")


def test_chat_ends_at_end_of_input(model_dir: Path):
    proc = cli("chat", *greedy(model_dir, "-q"), stdin="hello\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.endswith("\n")


def test_ctrl_c_stops_the_answer_and_the_session_goes_on(engine, tokenizer: Tokenizer, monkeypatch):
    real_stream = engine.stream
    interrupted = []

    def stream_interrupted_after_one_step(*args, **kwargs):
        steps = real_stream(*args, **kwargs)
        try:
            yield next(steps)
            interrupted.append(True)
            raise KeyboardInterrupt
        finally:
            steps.close()

    monkeypatch.setattr(engine, "stream", stream_interrupted_after_one_step)
    session = ChatSession(
        engine,
        ChatTemplate.for_tokenizer(tokenizer),
        options=ChatOptions(n_predict=50),
        sampling=SamplingParams(temperature=0),
        spec=SpecOptions(),
        out=io.StringIO(),
    )
    result = session.answer("hello")
    assert interrupted and result.stop_reason == "cancelled"
    assert [m["role"] for m in session.messages] == ["user", "assistant"]

    monkeypatch.setattr(engine, "stream", real_stream)
    result = session.answer("go on")
    assert result.stop_reason in ("eos", "length")
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
    session.reset()
    assert session.messages == []


def test_answer_view_shows_reasoning_only_when_asked():
    events = [ChatEvent("reasoning", "hmm"), ChatEvent("content", "Hi.")]
    for show, expected in [(True, "[thinking]\nhmm\n[/thinking]\nHi.\n"), (False, "Hi.\n")]:
        out = io.StringIO()
        view = AnswerView(out, show_reasoning=show, color=False)
        view.show(events)
        view.end()
        assert out.getvalue() == expected
        assert view.assistant_message() == {"role": "assistant", "content": "Hi."}


def test_answer_view_dims_reasoning_on_a_terminal():
    out = io.StringIO()
    view = AnswerView(out, show_reasoning=True, color=True)
    view.show([ChatEvent("reasoning", "hmm"), ChatEvent("content", "Hi.")])
    assert out.getvalue() == "\x1b[2mhmm\x1b[0m\nHi."


# --------------------------------------------------------------------------- errors: exit code, one line


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["run", "chat"])
def test_unknown_flag_exits_2(command, model_dir: Path, capsys):
    assert main([command, "-m", str(model_dir), "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in one_line_error(capsys)


def test_missing_prompt_file_exits_1(model_dir: Path, tmp_path: Path, capsys):
    assert main(["run", "-m", str(model_dir), "-f", str(tmp_path / "absent.txt")]) == 1
    assert one_line_error(capsys) == f"error: -f/--file {tmp_path / 'absent.txt'}: no such file\n"


def test_prompt_longer_than_the_context_exits_1(model_dir: Path, capsys):
    assert main(["run", "-m", str(model_dir), "-p", "hello world hello world", "-c", "4"]) == 1
    assert "-c/--ctx-size is 4; raise -c or shorten the prompt" in one_line_error(capsys)


def test_prompt_ids_outside_the_vocabulary_exit_1(model_dir: Path, capsys):
    assert main(["run", "-m", str(model_dir), "--prompt-ids", f"2,{ref.VOCAB}", "-q"]) == 1
    assert f"token id {ref.VOCAB} is outside the model's vocabulary" in one_line_error(capsys)


@pytest.mark.parametrize("command", [["run", "--chat", "-p", "hi"], ["chat"]])
def test_a_model_without_a_template_names_the_fix(command, tmp_path: Path, capsys):
    write_tokenizer(tmp_path, template=None)  # fails before any weights are read
    assert main([command[0], "-m", str(tmp_path), *command[1:]]) == 1
    assert "has no chat template; pass --chat-template-file FILE" in one_line_error(capsys)
