"""`gemma-mtp bench` takes run's model-loading flags (`cli.model_args.add_load_arguments`): they
build one `LoadOptions` in `BenchConfig.load`, and the target and every drafter are loaded through
`gemma_mtp.load` with it (each drafter sharing the loaded target). Without -m the demo pair is
benched, as `run` uses it. The loader is faked: no model is loaded and nothing is measured."""

from __future__ import annotations

import sys
import types

import pytest

import gemma_mtp
from gemma_mtp import demo
from gemma_mtp.bench.cli import bench_command
from gemma_mtp.cli.main import build_parser, main
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.quant.policy import KINDS

BENCH = ["bench", "-m", "target.gguf"]


class EngineBuilt(Exception):
    """Stops the bench once the target and the first drafter are loaded: nothing later is under test."""


@pytest.fixture
def loads(monkeypatch) -> dict[str, list]:
    calls: dict[str, list] = {"target": [], "drafter": []}

    def load(model=None, draft=None, *, options, reuse_target=None, **fields):
        if reuse_target is None:
            calls["target"].append(options)
            return types.SimpleNamespace(target=types.SimpleNamespace(device="cpu"))
        calls["drafter"].append((fields["model_draft"], options, reuse_target))
        raise EngineBuilt

    fake = types.ModuleType("gemma_mtp.api")
    fake.load = load
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
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
    assert (args.quantized, args.quant_kernels) == (LoadOptions().quantized, LoadOptions().quant_kernels)


@pytest.mark.parametrize(("flag", "value"), [("--quantized", True), ("--no-quantized", False)])
def test_quantized_flag_is_parsed(flag, value):
    assert _args([*BENCH, flag]).quantized is value


def test_repeated_quant_kernels_add_up_and_a_later_type_wins():
    argv = [*BENCH, "--quant-kernels", "Q8_0=gguf,Q6_K=q8", "--quant-kernels", "Q8_0=int8"]
    assert _args(argv).quant_kernels == {"Q8_0": "int8", "Q6_K": "q8"}


def test_load_flags_reach_the_target_and_drafter_loads(loads, prompts):
    argv = [*BENCH, "-md", "drafter.gguf", "--no-quantized", "--quant-kernels", "Q8_0=q8", "-t", "1"]
    with pytest.raises(EngineBuilt):
        bench_command(_args([*argv, *prompts, "--device", "cpu"]))
    [target] = loads["target"]
    assert (target.model, target.model_draft, target.device, target.threads) == (
        "target.gguf",
        None,
        "cpu",
        1,
    )
    assert (target.quantized, target.quant_kernels) == (False, {"Q8_0": "q8"})
    [(path, drafter_options, shared)] = loads["drafter"]
    assert path == "drafter.gguf" and drafter_options == target and shared is not None


def test_the_loaders_get_none_for_both_by_default(loads, prompts):
    with pytest.raises(EngineBuilt):
        bench_command(_args([*BENCH, "-md", "drafter.gguf", *prompts]))
    [target] = loads["target"]
    assert (target.quantized, target.quant_kernels) == (None, None)


def test_without_m_bench_uses_the_demo_pair_with_the_notice(loads, prompts, monkeypatch, capsys):
    monkeypatch.setattr(demo, "demo_target", lambda: "/cache/gemma-3-270m.gguf")
    with pytest.raises(EngineBuilt):
        bench_command(_args(["bench", *prompts]))
    assert loads["target"][0].model == "/cache/gemma-3-270m.gguf"
    assert loads["drafter"][0][0] == str(demo.demo_drafter())
    assert "no -m/--model: using the demo target Gemma 3 270M" in capsys.readouterr().err


def test_bench_shares_runs_model_loading_flags():
    argv = ["-m", "T", "--device", "cpu", "--dtype", "float32", "-c", "256", "-t", "1"]
    argv += ["--quantized", "--quant-kernels", "Q6_K=float"]
    run = build_parser().parse_args(["run", *argv])
    bench = build_parser().parse_args(["bench", *argv])
    for name in ("device", "dtype", "ctx_size", "threads", "quantized", "quant_kernels"):
        assert getattr(bench, name) == getattr(run, name), name
    assert bench.models == [run.model]  # bench takes several: -m A B
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


def test_drafters_take_a_list_like_targets_and_repeat_too():
    """-m A B and -md X Y (the issue's shape), or -md X -md Y: every drafter benched."""
    from gemma_mtp.cli.main import build_parser

    args = build_parser().parse_args(
        ["bench", "-m", "a.gguf", "b.gguf", "-md", "x.gguf", "y.gguf", "-md", "z.gguf"]
    )
    assert args.models == ["a.gguf", "b.gguf"] and args.drafts == ["x.gguf", "y.gguf", "z.gguf"]
    assert build_parser().parse_args(["bench"]).drafts == []
