"""`gemma-mtp bench` takes run's model-loading flags (the shared `cli.model_args` helpers):
`--quantized/--no-quantized` and `--quant-kernels` reach `BenchConfig` and the loads of the target
(`gemma_mtp.load`) and of every drafter, and a bad value is one usage error naming the flag. The
loaders are faked: no model is loaded and nothing is measured."""

from __future__ import annotations

import sys
import types

import pytest

import gemma_mtp
from gemma_mtp.bench.cli import bench_command
from gemma_mtp.bench.runner import BenchConfig
from gemma_mtp.cli.main import build_parser, main
from gemma_mtp.quant.policy import KINDS

BENCH = ["bench", "-m", "target.gguf"]


class EngineBuilt(Exception):
    """Stops the bench once the target and the first drafter are loaded: nothing later is under test."""


@pytest.fixture
def loads(monkeypatch) -> dict[str, list]:
    calls: dict[str, list] = {"target": [], "drafter": []}
    target = types.SimpleNamespace(device="cpu")

    def load(model, draft=None, **options):
        calls["target"].append((model, draft, options))
        return types.SimpleNamespace(target=target, config=None, stop_ids=frozenset())

    def engine(*args, **kwargs):
        raise EngineBuilt

    def load_gguf_model(path, **options):
        calls["drafter"].append((str(path), options))
        return object(), None, None

    fake = types.ModuleType("gemma_mtp.api")
    fake.load, fake.Engine = load, engine
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
    monkeypatch.setattr("gemma_mtp.weights.gguf_loader.load_gguf_model", load_gguf_model)
    return calls


@pytest.fixture
def prompts(tmp_path) -> list[str]:
    """`--prompts FILE` of token ids, so that no tokenizer is read."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"category": "ids", "prompt": [2, 5, 9]}\n')
    return ["--prompts", str(path)]


def _args(argv: list[str]):
    return build_parser().parse_args(argv)


def test_defaults_leave_both_to_the_loader():
    args = _args(BENCH)
    assert (args.quantized, args.quant_kernels) == (None, None)
    assert (args.quantized, args.quant_kernels) == (
        BenchConfig(model="m").quantized,
        BenchConfig(model="m").quant_kernels,
    )


@pytest.mark.parametrize(("flag", "value"), [("--quantized", True), ("--no-quantized", False)])
def test_quantized_flag_is_parsed(flag, value):
    assert _args([*BENCH, flag]).quantized is value


def test_repeated_quant_kernels_add_up_and_a_later_type_wins():
    argv = [*BENCH, "--quant-kernels", "Q8_0=gguf,Q6_K=q8", "--quant-kernels", "Q8_0=int8"]
    assert _args(argv).quant_kernels == {"Q8_0": "int8", "Q6_K": "q8"}


def test_quant_flags_reach_the_target_and_drafter_loads(loads, prompts):
    argv = [*BENCH, "-md", "drafter.gguf", "--no-quantized", "--quant-kernels", "Q8_0=q8"]
    with pytest.raises(EngineBuilt):
        bench_command(_args([*argv, *prompts, "--device", "cpu"]))
    [(model, draft, target_options)] = loads["target"]
    assert (model, draft) == ("target.gguf", None)
    assert (target_options["quantized"], target_options["kernels"]) == (False, {"Q8_0": "q8"})
    [(path, drafter_options)] = loads["drafter"]
    assert path == "drafter.gguf"
    assert (drafter_options["quantized"], drafter_options["kernels"]) == (False, {"Q8_0": "q8"})


def test_the_loaders_get_none_for_both_by_default(loads, prompts):
    with pytest.raises(EngineBuilt):
        bench_command(_args([*BENCH, "-md", "drafter.gguf", *prompts]))
    target_options, drafter_options = loads["target"][0][2], loads["drafter"][0][1]
    assert (target_options["quantized"], target_options["kernels"]) == (None, None)
    assert (drafter_options["quantized"], drafter_options["kernels"]) == (None, None)


def test_bench_shares_runs_model_loading_flags():
    argv = ["-m", "T", "--device", "cpu", "--dtype", "float32", "-c", "256"]
    argv += ["--quantized", "--quant-kernels", "Q6_K=float"]
    run = build_parser().parse_args(["run", *argv])
    bench = build_parser().parse_args(["bench", *argv])
    for name in ("model", "device", "dtype", "ctx_size", "quantized", "quant_kernels"):
        assert getattr(bench, name) == getattr(run, name), name
    assert build_parser().parse_args(["bench", "-md", "a", "--spec-draft-model", "b"]).drafts == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("Q8_0=", "'Q8_0=' is not TYPE=KERNEL"),
        ("Q9_9=q8", "unknown GGUF type 'Q9_9'"),
        ("Q8_0=int3", f"Q8_0='int3'; use one of {', '.join(KINDS)}"),
        ("F16=gguf", "F16 has no quantized kernel here"),
    ],
)
def test_bad_quant_kernels_exit_2_with_one_line_naming_the_flag(value, named, capsys):
    assert main([*BENCH, "--quant-kernels", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --quant-kernels" in err and named in err


def test_quantized_takes_no_value(capsys):
    assert main([*BENCH, "--quantized=yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantized" in err
