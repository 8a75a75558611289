"""`gemma-mtp` argument parsing, exit codes and output, with a fake `gemma_mtp.api`."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest

import gemma_mtp
from gemma_mtp.cli.args import ChatOptions, RunOptions
from gemma_mtp.cli.main import PLANNED_COMMANDS, build_parser, main
from gemma_mtp.cli.model_args import load_options_from_args
from gemma_mtp.cli.spec_args import SpecFlags, spec_flags_from_args
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import GemmaMTPError, ModelFormatError, UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.threads import physical_cores

RESULT_DICT = {
    "text": "",
    "token_ids": [7, 8, 9],
    "n_prompt": 3,
    "n_generated": 3,
    "stop_reason": "length",
    "timings": {"load_s": 0.5, "prompt_ms": 1.0, "decode_ms": 2.0, "decode_tokens_per_s": 1000.0},
    "speculative": None,
}


class FakeResult:
    def __init__(self, text: str = "") -> None:
        self.text = text
        self.token_ids = list(RESULT_DICT["token_ids"])
        self.timings = types.SimpleNamespace(**RESULT_DICT["timings"])
        self.speculative = None

    def to_dict(self) -> dict:
        return {**RESULT_DICT, "text": self.text}


class FakeApi(types.ModuleType):
    """Stands in for gemma_mtp.api and the engine it loads: records calls; `error` makes `load` raise it."""

    def __init__(self) -> None:
        super().__init__("gemma_mtp.api")
        self.load_calls: list[tuple] = []
        self.generate_calls: list[tuple] = []
        self.error: BaseException | None = None
        self.text = ""
        self.load_report = None
        self.threads = 2
        self.config = types.SimpleNamespace(vocab_size=256)
        self.drafter = None

    def load(self, model, draft=None, **options):
        self.load_calls.append((model, draft, options))
        if self.error is not None:
            raise self.error
        self.drafter = draft
        return self

    def default_spec(self):
        """As `Engine.default_spec` for an assistant: mtp with a drafter, none without."""
        return SpecOptions(type="mtp" if self.drafter else "none")

    def generate(self, prompt_ids, *, n_predict, sampling, spec):
        self.generate_calls.append((prompt_ids, n_predict, sampling, spec))
        return FakeResult(self.text)

    def stream(self, prompt_ids, *, n_predict, sampling, spec, result):
        self.generate_calls.append((prompt_ids, n_predict, sampling, spec))
        result.token_ids.extend(RESULT_DICT["token_ids"])
        result.timings.decode_tokens_per_s = RESULT_DICT["timings"]["decode_tokens_per_s"]
        if self.text:
            yield types.SimpleNamespace(token_ids=result.token_ids, text=self.text)


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi()
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
    return fake


def parse_run(*argv: str):
    return build_parser().parse_args(["run", *argv])


RUN = ("run", "-m", "model-dir", "--prompt-ids", "2,105,7")


@pytest.mark.parametrize(
    "dest, aliases, value, expected",
    [
        ("model", ["-m", "--model"], "dir", "dir"),
        ("model_draft", ["-md", "--model-draft", "--spec-draft-model"], "d", "d"),
        ("spec_draft_n_max", ["--spec-draft-n-max", "--draft-max", "--draft"], "5", 5),
        ("spec_draft_n_min", ["--spec-draft-n-min", "--draft-min"], "2", 2),
        ("spec_draft_p_min", ["--spec-draft-p-min", "--draft-p-min"], "0.5", 0.5),
        ("prompt", ["-p", "--prompt"], "hi", "hi"),
        ("file", ["-f", "--file"], "x.txt", "x.txt"),
        ("n_predict", ["-n", "--n-predict"], "-1", -1),
        ("ctx_size", ["-c", "--ctx-size"], "512", 512),
        ("threads", ["-t", "--threads"], "3", 3),
        ("seed", ["-s", "--seed"], "42", 42),
        ("n_gpu_layers", ["-ngl", "--n-gpu-layers"], "10", 10),
        ("n_gpu_layers_draft", ["-ngld", "--n-gpu-layers-draft"], "4", 4),
        ("temperature", ["--temp"], "0.3", 0.3),
        ("top_k", ["--top-k"], "7", 7),
        ("top_p", ["--top-p"], "0.5", 0.5),
        ("min_p", ["--min-p"], "0.1", 0.1),
        ("device", ["--device"], "cuda", "cuda"),
        ("dtype", ["--dtype"], "bfloat16", "bfloat16"),
        ("spec_type", ["--spec-type"], "ngram", "ngram"),
        ("prompt_ids", ["--prompt-ids"], "2, 105,7", [2, 105, 7]),
        ("system_prompt", ["-sys", "--system-prompt"], "be brief", "be brief"),
        ("chat_template_file", ["--chat-template-file"], "t.jinja", "t.jinja"),
        ("reasoning", ["-rea", "--reasoning"], "off", "off"),
    ],
)
def test_every_alias_sets_the_same_dest(dest, aliases, value, expected):
    for alias in aliases:
        assert getattr(parse_run(alias, value), dest) == expected, alias


@pytest.mark.parametrize(
    "dest, aliases",
    [
        ("chat", ["--jinja", "--chat"]),
        ("spec_autotune", ["--spec-autotune"]),
        ("json", ["--json"]),
        ("quiet", ["-q", "--quiet", "--log-disable"]),
    ],
)
def test_every_switch_alias_sets_the_same_dest(dest, aliases):
    assert getattr(parse_run(), dest) is False
    for alias in aliases:
        assert getattr(parse_run(alias), dest) is True, alias


def test_run_defaults_come_from_the_dataclasses():
    args = parse_run()
    for field in dataclasses.fields(RunOptions):
        if field.name not in ("verbose", "load", "spec", "fallback_chat_template"):  # not flags, or top-level
            assert getattr(args, field.name) == field.default, field.name
    assert load_options_from_args(args) == LoadOptions(threads=physical_cores())  # -t: physical cores
    assert spec_flags_from_args(args) == SpecFlags()
    for field in dataclasses.fields(SamplingParams):
        if field.name != "seed":
            assert getattr(args, field.name) == field.default, field.name
    assert args.seed == -1  # the CLI's "random", i.e. SamplingParams(seed=None)


def test_documented_defaults():
    args = parse_run()
    assert (args.n_predict, args.ctx_size) == (128, 4096)
    assert spec_flags_from_args(args).resolve("mtp").n_max == 3  # no flag: SpecOptions' default
    assert args.reasoning == "auto"


def test_chat_shares_the_flags_and_answers_until_the_end_of_turn():
    args = build_parser().parse_args(["chat", "-m", "d", "--draft-max", "5", "--temp", "0", "-rea", "on"])
    assert (args.model, args.spec_draft_n_max, args.temperature, args.reasoning) == ("d", 5, 0.0, "on")
    assert args.n_predict == ChatOptions().n_predict == -1


@pytest.mark.parametrize("argv", [["--verbose", "run"], ["run", "--verbose"]])
def test_verbose_is_accepted_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["run"]).verbose is False


@pytest.mark.parametrize(
    "spec_type, loaded_default, resolved",
    [(None, "none", "none"), (None, "mtp", "mtp"), (None, "draft", "draft"), ("none", "mtp", "none")]
    + [("draft-mtp", "none", "mtp")],
)
def test_spec_type_resolution(spec_type, loaded_default, resolved):
    """No --spec-type: what the loaded drafter is (Engine.default_spec); draft-mtp is mtp."""
    assert SpecFlags(type=spec_type).resolve(loaded_default).type == resolved


def test_json_prints_one_object_of_the_design_shape(api, capsys):
    assert main([*RUN, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == RESULT_DICT


def test_run_passes_flags_to_load_and_generate(api):
    argv = [*RUN, "-n", "16", "-c", "256", "--temp", "0", "--top-k", "5", "-s", "9"]
    argv += ["--device", "cpu", "--dtype", "float32", "-ngl", "3", "-ngld", "2"]
    assert main(argv) == 0
    load = LoadOptions(
        model="model-dir", dtype="float32", device="cpu", n_gpu_layers=3, n_gpu_layers_draft=2, ctx_size=256
    )
    load = dataclasses.replace(load, threads=physical_cores())
    # no progress bar: stderr is not a terminal here
    assert api.load_calls == [("model-dir", None, {"options": load, "progress": None})]
    sampling = SamplingParams(temperature=0.0, top_k=5, seed=9)
    assert api.generate_calls == [([2, 105, 7], 16, sampling, SpecOptions(type="none"))]


def test_seed_minus_one_means_random(api):
    assert main([*RUN, "-s", "-1"]) == 0
    assert api.generate_calls[0][2].seed is None


def test_n_predict_minus_one_is_passed_through(api):
    assert main([*RUN, "-n", "-1"]) == 0
    assert api.generate_calls[0][1] == -1


def test_plain_output_prints_ids_and_a_summary(api, capsys):
    assert main(list(RUN)) == 0
    captured = capsys.readouterr()
    assert captured.out == "7,8,9\n"
    assert captured.err.endswith("tok/s\n") and captured.err.startswith("3 tokens in ")


def test_plain_output_streams_text_when_the_model_has_a_tokenizer(api, capsys, monkeypatch):
    monkeypatch.setattr("gemma_mtp.cli.run.read_tokenizer", lambda model, required: object())
    api.text = "hello"
    assert main(list(RUN)) == 0
    assert capsys.readouterr().out == "hello\n"


def test_help_exits_zero(capsys):
    assert main(["run", "--help"]) == 0
    assert "--spec-draft-n-max" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv", [["run", "--no-such-flag"], ["--no-such-flag", "run"], ["run", "-m"], []])
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    assert "error:" in one_line_error(capsys)


def test_unknown_flag_is_named(capsys):
    assert main([*RUN, "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in one_line_error(capsys)


@pytest.mark.parametrize("ids, bad", [("2,x,7", "'x'"), ("2,,7", "''"), ("1.5", "'1.5'"), ("2,-3", "-3")])
def test_bad_prompt_ids_exit_2_naming_the_item(ids, bad, capsys):
    assert main(["run", "-m", "d", "--prompt-ids", ids]) == 2
    err = one_line_error(capsys)
    assert "--prompt-ids" in err and bad in err


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--top-k", "-1"], "--top-k"),
        (["--top-p", "2"], "--top-p"),
        (["--min-p", "-0.5"], "--min-p"),
        (["-s", "-5"], "--seed"),
        (["-n", "-2"], "--n-predict"),
        (["-c", "0"], "--ctx-size"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(flags, named, api, capsys):
    assert main([*RUN, *flags]) == 2
    assert named in one_line_error(capsys)
    assert api.load_calls == []


def test_missing_prompt_is_a_usage_error(api, capsys):
    assert main(["run", "-m", "d"]) == 2
    assert "--prompt-ids" in one_line_error(capsys)


def test_text_prompts_need_the_model_tokenizer(api, capsys, tmp_path):
    assert main(["run", "-m", str(tmp_path), "-p", "hi"]) == 1
    assert "no tokenizer.json" in one_line_error(capsys)
    assert api.load_calls == []


def test_a_missing_prompt_file_is_named(api, capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    assert main(["run", "-m", "d", "-f", str(missing)]) == 1
    assert one_line_error(capsys) == f"error: -f/--file {missing}: no such file\n"


@pytest.mark.parametrize("flags", [["--chat"], ["-sys", "be brief"], ["--reasoning", "on"]])
def test_template_flags_do_not_go_with_prompt_ids(flags, api, capsys):
    assert main([*RUN, *flags]) == 2
    assert "--prompt-ids" in one_line_error(capsys)


def test_prompt_ids_outside_the_model_vocabulary_exit_1(api, capsys):
    assert main(["run", "-m", "d", "--prompt-ids", "2,256"]) == 1
    assert "token id 256 is outside the model's vocabulary (0..255)" in one_line_error(capsys)
    assert api.generate_calls == []


@pytest.mark.parametrize(
    "flags, spec_type, draft",
    [
        (["--spec-type", "draft-mtp", "-md", "d"], "mtp", "d"),
        (["-md", "d"], "mtp", "d"),
        (["--spec-type", "ngram"], "ngram", None),
    ],
)
def test_speculative_flags_reach_the_engine(flags, spec_type, draft, api):
    assert main([*RUN, *flags, "--draft-max", "5", "--draft-p-min", "0.25"]) == 0
    assert api.load_calls[0][1] == draft
    spec = api.generate_calls[0][3]
    assert (spec.type, spec.n_max, spec.p_min) == (spec_type, 5, 0.25)


@pytest.mark.parametrize("spec_type", ["mtp", "draft"])
def test_a_drafting_spec_type_needs_a_drafter(spec_type, api, capsys):
    assert main([*RUN, "--spec-type", spec_type]) == 2
    assert "needs a drafter: pass -md/--model-draft" in one_line_error(capsys)


@pytest.mark.parametrize(
    "error, code",
    [(GemmaMTPError("bad\nthing"), 1), (ModelFormatError("missing x"), 1), (UsageError("no"), 2)],
)
def test_library_errors_print_one_line(error, code, api, capsys):
    api.error = error
    assert main(list(RUN)) == code
    assert one_line_error(capsys) == f"error: {' '.join(str(error).split())}\n"


def test_unexpected_errors_print_type_and_message(api, capsys):
    api.error = RuntimeError("boom")
    assert main(list(RUN)) == 1
    assert one_line_error(capsys) == "error: RuntimeError: boom\n"


def test_verbose_shows_the_traceback(api, capsys):
    api.error = RuntimeError("boom")
    assert main([*RUN, "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: RuntimeError: boom\n")


@pytest.mark.parametrize("name", PLANNED_COMMANDS)
def test_planned_commands_exit_2(name, capsys):
    assert main([name, "--any", "flag"]) == 2
    assert one_line_error(capsys) == f"error: 'gemma-mtp {name}' is not available in this version yet\n"


def test_spec_autotune_reaches_the_engine(api):
    assert main([*RUN, "--spec-type", "ngram", "--spec-autotune"]) == 0
    assert api.generate_calls[0][3].autotune is True


@pytest.mark.parametrize("command", ["run", "chat", "serve", "bench", "train-drafter"])
def test_every_surface_takes_threads(command):
    argv = [command, "-t", "3"] + (["-m", "t", "--out", "d.gguf"] if command == "train-drafter" else [])
    assert build_parser().parse_args(argv).threads == 3


def test_threads_reach_the_load(api):
    assert main([*RUN, "-t", "1"]) == 0
    assert api.load_calls[0][2]["options"].threads == 1


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"], ["serve", "--help"]])
def test_version_and_help_do_not_import_torch(argv):
    import subprocess

    code = (
        "import sys, contextlib, io\n"
        "from gemma_mtp.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main({argv!r})\n"
        "assert code == 0, code\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
