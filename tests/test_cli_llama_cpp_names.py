"""llama.cpp's spellings: its --spec-type names map to our strategies of the same meaning or say
what to use instead; -e/--escape reads escape sequences in -p with llama.cpp's rules."""

from __future__ import annotations

import pytest

from gemma_mtp.cli.args import RunOptions
from gemma_mtp.cli.escapes import process_escapes
from gemma_mtp.cli.main import build_parser, main
from gemma_mtp.cli.run import _prompt_text
from gemma_mtp.cli.spec_args import SpecFlags, spec_flags_from_args
from gemma_mtp.errors import UsageError
from gemma_mtp.speculative.options import SPEC_UNSUPPORTED, SpecOptions

RUN = ("run", "-m", "model-dir", "--prompt-ids", "2,105,7")


@pytest.mark.parametrize(
    ("theirs", "ours"), [("draft-mtp", "mtp"), ("draft-simple", "draft"), ("ngram-simple", "ngram")]
)
def test_llama_cpp_spec_type_names_map_to_the_same_strategy(theirs, ours):
    args = build_parser().parse_args([*RUN, "--spec-type", theirs])
    assert spec_flags_from_args(args).type == ours
    assert SpecOptions(type=theirs).type == ours


@pytest.mark.parametrize("name", sorted(SPEC_UNSUPPORTED))
def test_llama_cpp_strategies_we_lack_say_what_to_use(name):
    with pytest.raises(UsageError, match=f"--spec-type {name} is not supported by gemma-mtp; use "):
        SpecFlags(type=name)


def test_an_unsupported_spec_type_is_a_one_line_usage_error(capsys):
    assert main([*RUN, "--spec-type", "ngram-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use ngram (prompt lookup, llama.cpp's ngram-simple)" in err


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\nb", "a\nb"),
        ("tab\\there\\r", "tab\there\r"),
        ("q\\'\\\"", "q'\""),
        ("back\\\\slash\\\\n", "back\\slash\\n"),
        ("hex \\x41\\x4z", "hex A\\x4z"),
        ("keep \\q and a trailing \\", "keep \\q and a trailing \\"),
    ],
)
def test_process_escapes_follows_llama_cpp(raw, text):
    assert process_escapes(raw) == text


@pytest.mark.parametrize(("flags", "text"), [(["-e"], "a\nb"), (["--escape"], "a\nb"), ([], "a\\nb")])
def test_escape_flag_applies_to_the_prompt(flags, text):
    args = build_parser().parse_args(["run", "-p", "a\\nb", *flags])
    assert args.escape == bool(flags)
    assert _prompt_text(RunOptions(prompt=args.prompt, escape=args.escape)) == text


def test_no_escape_keeps_the_backslashes():
    args = build_parser().parse_args(["run", "-p", "a\\nb", "-e", "--no-escape"])
    assert _prompt_text(RunOptions(prompt=args.prompt, escape=args.escape)) == "a\\nb"
