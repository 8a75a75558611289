"""The chat page's JavaScript (src/gemma_mtp/server/static), unit-tested by node's own test
runner (tests/js/page.test.mjs): the SSE parser, the stream -> answer builder, the token marks and
the Markdown renderer's escaping. Skips where node is missing, except under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).parent / "js"


def test_the_page_modules_pass_their_node_tests():
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed (apt-get install nodejs) to run tests/js"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing tool fails the suite)")
        pytest.skip(reason)
    files = sorted(str(path) for path in TESTS.glob("*.test.mjs"))
    assert files
    run = subprocess.run([node, "--test", *files], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout
