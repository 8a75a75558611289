"""`gemma-mtp serve` takes run's model-loading flags (`cli.model_args.add_load_arguments`): they
build `ServerSettings.load`, the `LoadOptions` that `gemma_mtp.load` gets (for the target and its
drafter, with one row per slot), and a bad value is one usage error naming the flag. The loader is
faked: no model is loaded and no server starts."""

from __future__ import annotations

import sys
import types

import pytest

import gemma_mtp
from gemma_mtp.cli.main import build_parser, main
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.quant.policy import KINDS
from gemma_mtp.server.cli import settings_from_args
from gemma_mtp.server.settings import ServerSettings

SERVE = ["serve", "-m", "target.gguf"]


class LoadCalled(Exception):
    """Stops `load_service` right after its `load` call: nothing past the loader is under test."""


def _settings(argv: list[str]) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(argv))


@pytest.fixture
def load_calls(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def load(model, draft=None, *, options):
        calls.append((model, draft, options))
        raise LoadCalled

    fake = types.ModuleType("gemma_mtp.api")
    fake.load = load
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
    monkeypatch.setattr(
        "gemma_mtp.server.service.load_tokenizer", lambda model: types.SimpleNamespace(chat_template=None)
    )
    return calls


def test_defaults_leave_both_to_the_loader():
    load = _settings(SERVE).load
    assert (load.quantized, load.quant_kernels) == (None, None)
    assert (load.quantized, load.quant_kernels) == (LoadOptions().quantized, LoadOptions().quant_kernels)


@pytest.mark.parametrize(("flag", "value"), [("--quantized", True), ("--no-quantized", False)])
def test_quantized_flag_sets_the_setting(flag, value):
    assert _settings([*SERVE, flag]).load.quantized is value


def test_repeated_quant_kernels_add_up_and_a_later_type_wins():
    argv = [*SERVE, "--quant-kernels", "Q8_0=q8,Q4_K=gguf", "--quant-kernels", "q8_0=int8"]
    assert _settings(argv).load.quant_kernels == {"Q8_0": "int8", "Q4_K": "gguf"}


def test_quant_flags_reach_the_load_of_target_and_drafter(load_calls):
    from gemma_mtp.server.service import load_service

    argv = [*SERVE, "-md", "drafter.gguf", "--no-quantized", "--quant-kernels", "Q8_0=q8"]
    with pytest.raises(LoadCalled):
        load_service(_settings(argv))
    [(model, draft, options)] = load_calls
    assert (model, draft) == ("target.gguf", "drafter.gguf")
    assert (options.quantized, options.quant_kernels) == (False, {"Q8_0": "q8"})
    assert options.max_batch == ServerSettings().parallel  # one Engine, a row per slot


def test_the_loader_gets_none_for_both_by_default(load_calls):
    from gemma_mtp.server.service import load_service

    with pytest.raises(LoadCalled):
        load_service(_settings(SERVE))
    options = load_calls[0][2]
    assert (options.quantized, options.quant_kernels) == (None, None)


def test_serve_shares_runs_model_loading_flags():
    argv = ["-m", "T", "-md", "D", "--device", "cpu", "--dtype", "float32", "-ngl", "3", "-ngld", "2"]
    argv += ["-c", "256", "-t", "1", "--quantized", "--quant-kernels", "Q6_K=float"]
    run = build_parser().parse_args(["run", *argv])
    serve = build_parser().parse_args(["serve", *argv])
    names = ("model", "model_draft", "device", "dtype", "n_gpu_layers", "n_gpu_layers_draft", "ctx_size")
    for name in (*names, "threads", "quantized", "quant_kernels"):
        assert getattr(serve, name) == getattr(run, name), name


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("Q8_0", "'Q8_0' is not TYPE=KERNEL"),
        ("Q9_9=q8", "unknown GGUF type 'Q9_9'"),
        ("Q8_0=int3", f"Q8_0='int3'; use one of {', '.join(KINDS)}"),
        ("F16=gguf", "F16 has no quantized kernel here"),
    ],
)
def test_bad_quant_kernels_exit_2_with_one_line_naming_the_flag(value, named, capsys):
    assert main([*SERVE, "--quant-kernels", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --quant-kernels" in err and named in err


def test_quantized_takes_no_value(capsys):
    assert main([*SERVE, "--quantized=yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantized" in err
