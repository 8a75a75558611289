"""`--quantized/--no-quantized` and `--quant-kernels`: they reach `LoadOptions.quantized` and
`LoadOptions.quant_kernels` (what `gemma_mtp.load` takes), and a bad value is one usage error naming
the flag."""

from __future__ import annotations

import pytest

from gemma_mtp.cli.args import ChatOptions, RunOptions, parse_quant_kernels
from gemma_mtp.cli.common import options_from_args
from gemma_mtp.cli.main import build_parser, main
from gemma_mtp.engine.options import LoadOptions

RUN = ["run", "-m", "model.gguf", "-p", "hi"]


def _options(argv: list[str], cls: type[RunOptions] = RunOptions) -> LoadOptions:
    return options_from_args(build_parser().parse_args(argv), cls).load


def test_defaults_leave_both_to_the_loader():
    options = _options(RUN)
    assert options.quantized is None and options.quant_kernels is None
    assert (options.quantized, options.quant_kernels) == (
        LoadOptions().quantized,
        LoadOptions().quant_kernels,
    )


@pytest.mark.parametrize(("flag", "value"), [("--quantized", True), ("--no-quantized", False)])
def test_quantized_flag_sets_the_option(flag, value):
    assert _options([*RUN, flag]).quantized is value


def test_quant_kernels_parse_to_the_loaders_mapping():
    options = _options([*RUN, "--quant-kernels", "Q8_0=int8,Q6_K=float"])
    assert options.quant_kernels == {"Q8_0": "int8", "Q6_K": "float"}


def test_quant_kernels_accept_any_case_and_spaces():
    assert parse_quant_kernels(" q8_0 = INT4 , q4_k=q8") == {"Q8_0": "int4", "Q4_K": "q8"}


def test_repeated_quant_kernels_add_up_and_a_later_type_wins():
    argv = [*RUN, "--quant-kernels", "Q8_0=int8,Q4_K=int4", "--quant-kernels", "Q8_0=q8"]
    assert _options(argv).quant_kernels == {"Q8_0": "q8", "Q4_K": "int4"}


def test_chat_takes_the_same_flags():
    argv = ["chat", "-m", "model.gguf", "--no-quantized", "--quant-kernels", "Q5_0=int4"]
    options = _options(argv, ChatOptions)
    assert options.quantized is False and options.quant_kernels == {"Q5_0": "int4"}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("Q8_0", "'Q8_0' is not TYPE=KERNEL"),
        ("Q8_0=", "'Q8_0=' is not TYPE=KERNEL"),
        ("=int8", "'=int8' is not TYPE=KERNEL"),
        ("Q8_0=int8,", "'' is not TYPE=KERNEL"),
        ("Q9_9=int8", "unknown GGUF type 'Q9_9'"),
        ("Q8_0=int3", "Q8_0='int3'; use one of gguf, q8, int4, int8, torch, float"),
        ("F16=int8", "F16 has no quantized kernel here"),
    ],
)
def test_bad_quant_kernels_exit_2_with_one_line_naming_the_flag(value, named, capsys):
    assert main([*RUN, "--quant-kernels", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --quant-kernels" in err and named in err


def test_quantized_takes_no_value(capsys):
    assert main([*RUN, "--quantized=yes"]) == 2
    assert "--quantized" in capsys.readouterr().err
