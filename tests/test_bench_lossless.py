"""`bench --check-lossless`: the chi-square homogeneity test against scipy's on hand-made counts
(and that it fails on different distributions), then the check on the tiny pair at temperature > 0
through the bench, reported in every speculative row."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import pytest
from scipy.stats import chi2_contingency

from gemma_mtp.bench.lossless import ALPHA, chi2_homogeneity


def test_chi2_homogeneity_matches_scipy_on_a_hand_made_table():
    a, b = Counter({1: 30, 2: 50, 3: 20}), Counter({1: 35, 2: 40, 3: 25})
    p, dof = chi2_homogeneity(a, b)
    stat, expected_p, expected_dof, _ = chi2_contingency([[30, 50, 20], [35, 40, 25]], correction=False)
    assert dof == expected_dof == 2 and p == pytest.approx(expected_p, rel=1e-9)


def test_rare_tokens_are_pooled_and_one_category_passes():
    a, b = Counter({1: 90, 7: 1, 8: 1}), Counter({1: 88, 9: 2, 10: 1})
    p, dof = chi2_homogeneity(a, b)
    assert dof == 1  # token 1 and the pooled rest
    assert chi2_homogeneity(Counter({4: 50}), Counter({4: 50})) == (1.0, 0)


def test_different_distributions_fail():
    p, _ = chi2_homogeneity(Counter({1: 150, 2: 50}), Counter({1: 90, 2: 110}))
    assert p < ALPHA


def test_the_bench_reports_the_check_at_temperature_above_zero(reference_models, tmp_path):
    from gemma_mtp.bench.cli import add_bench_arguments, bench_command

    pytest.importorskip("matplotlib")
    target = reference_models.target("e2b").path
    assistant = reference_models.assistant("e2b", ordered=True).path
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"category": "loop", "prompt": [2, 5, 9, 13, 5, 9, 13]}\n')
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "-m", str(target), "-md", str(assistant), "--spec-type", "mtp,ngram", "--n-max", "2"]
        + ["--reps", "1", "--prompts", str(prompts), "-n", "4", "--temp", "0,1.0", "--device", "cpu"]
        + ["--check-lossless", "40", "--out", str(tmp_path / "out")]
    )
    (tmp_path / "out").mkdir()
    assert bench_command(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    sampled = [r for r in rows if r["temperature"] == 1.0 and r["strategy"] != "none"]
    assert {r["strategy"] for r in sampled} == {"mtp", "ngram"}
    for row in sampled:
        check = row["lossless_sampling"]
        assert check["draws"] == 40 and check["passed"] and 0.0 <= check["pvalue"] <= 1.0
    assert all("lossless_sampling" not in r for r in rows if r["temperature"] == 0.0)
    assert "ok (p=" in (tmp_path / "out" / "report.md").read_text()
