"""`gemma-mtp bench` crosses every axis: targets (-m A B), drafters (-md X Y), --spec-type, --n-max,
--p-min and --temp; each row names its target, drafter, strategy, n_max, p_min and temperature.
Tiny random models and token-id prompts; nothing about speed is checked."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil

import pytest

from gemma_mtp.bench.cli import add_bench_arguments, bench_command, parse_spec_list
from gemma_mtp.bench.runner import BenchConfig
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    return parser


def test_spec_type_takes_a_list_with_llama_cpp_names():
    assert parse_spec_list("mtp,ngram-simple,none,draft-mtp") == ("mtp", "ngram", "none")
    assert _parser().parse_args(["bench", "--spec-type", "draft-simple"]).spec_type == ("draft",)
    with pytest.raises(argparse.ArgumentTypeError, match="draft-eagle3 is not supported by gemma-mtp"):
        parse_spec_list("mtp,draft-eagle3")
    with pytest.raises(argparse.ArgumentTypeError, match="'medusa' is not one of"):
        parse_spec_list("medusa")


@pytest.mark.parametrize(
    ("spec_type", "drafts", "message"),
    [
        (("mtp", "ngram"), (), "--spec-type mtp needs at least one drafter"),
        (("ngram", "none"), ("d.gguf",), "uses no drafter model; drop -md"),
    ],
)
def test_a_strategy_list_that_does_not_fit_the_drafters_is_a_usage_error(spec_type, drafts, message):
    with pytest.raises(UsageError, match=message):
        BenchConfig(load=LoadOptions(model="t.gguf"), drafts=drafts, spec_type=spec_type)


def test_plain_only_is_allowed():
    config = BenchConfig(load=LoadOptions(model="t.gguf"), spec_type="none")
    assert config.spec_type == ("none",) and config.strategies == ()


def test_every_axis_appears_in_the_rows(reference_models, tmp_path):
    target = reference_models.target("e2b").path
    other = tmp_path / "other-target"
    shutil.copytree(target, other)
    assistant = reference_models.assistant("e2b", ordered=True).path
    second = tmp_path / "second-assistant"
    shutil.copytree(assistant, second)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"category": "loop", "prompt": [2, 5, 9, 13, 5, 9, 13, 5]}\n')
    args = _parser().parse_args(
        ["bench", "-m", str(target), str(other), "-md", str(assistant), "-md", str(second)]
        + ["--spec-type", "mtp,ngram,none", "--n-max", "1,2", "--p-min", "0,0.5", "--temp", "0,0.5"]
        + ["--reps", "2", "--prompts", str(prompts), "-n", "4", "--device", "cpu"]
        + ["--out", str(tmp_path / "out")]
    )
    (tmp_path / "out").mkdir()
    assert bench_command(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    overall = [r for r in rows if r["category"] == "all"]
    seen = {
        (r["target"], r["drafter"], r["strategy"], r["n_max"], r["p_min"], r["temperature"]) for r in overall
    }
    targets, temps = (target.name, other.name), (0.0, 0.5)
    drafting = [(assistant.name, "mtp"), (second.name, "mtp"), ("ngram", "ngram")]
    expected = {(t, "none", "none", 0, None, temp) for t in targets for temp in temps}
    expected |= {
        (t, drafter, strategy, n, p, temp)
        for t, temp, (drafter, strategy), n, p in itertools.product(
            targets, temps, drafting, (1, 2), (0.0, 0.5)
        )
    }
    assert seen == expected and len(overall) == len(expected)
    for row in overall:
        for key in ("target", "drafter", "strategy", "n_max", "p_min", "temperature", "peak_rss_mb"):
            assert key in row, key
        for key in ("tokens_per_s", "acceptance_by_position", "tokens_per_forward", "ttft_ms"):
            assert key in row, key
        assert row["reps"] == 2
    greedy = [r for r in overall if r["temperature"] == 0.0 and r["strategy"] != "none"]
    assert greedy and all(r["lossless"] for r in greedy)
