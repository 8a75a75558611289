"""scripts/cuda_check.py off a GPU: without CUDA it says it skipped and exits 0; `--device cpu`
runs every section's comparisons CPU against CPU (so the script runs, and its sections pass where
they must: the same weights, the same kernels' bounds); a failed section exits 1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cuda_check.py"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=1200,
    )


def script_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("cuda_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cuda_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_without_cuda_the_check_says_it_skipped_and_exits_0(tmp_path):
    done = run_script("--check", str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SKIPPED: no CUDA device")


def test_a_directory_that_was_not_built_is_named_with_the_fix(tmp_path):
    done = run_script("--check", str(tmp_path), "--device", "cpu")
    assert done.returncode == 2
    assert f"missing; build them with --build {tmp_path}" in done.stderr


def test_a_failed_section_prints_fail_and_exits_1(tmp_path, monkeypatch, capsys):
    script = script_module(monkeypatch)
    for name in (*script.TARGETS, "e2b_assistant", script.BLOCKS_GGUF):
        (tmp_path / name).touch()

    def passing(root, device, **_):
        return script.Section("fine", numbers=["x 1"])

    def failing(root, device, **_):
        section = script.Section("broken", numbers=["max |diff| 2.0e+00 (limit 1e-3)"])
        section.case(False, "e2b: float32 max |diff| 2.0e+00 > 1e-3")
        return section

    for name in ("check_quantized", "check_lossless", "check_memory"):
        monkeypatch.setattr(script, name, passing)
    monkeypatch.setattr(script, "check_logits", failing)
    assert script.check(tmp_path, "cpu") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "FAIL (1 cases) broken: max |diff| 2.0e+00 (limit 1e-3)"
    assert out[1] == "    e2b: float32 max |diff| 2.0e+00 > 1e-3"
    assert out[2].startswith("PASS fine: x 1") and out[-1] == "1 of 4 sections failed on cpu"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("cuda_check")
    done = run_script("--build", str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_the_cpu_dry_run_passes_every_section(built):
    pytest.importorskip("triton", reason="the quantized section runs the Triton kernels (dev extra)")
    done = run_script("--check", str(built), "--device", "cpu", "--quick", TRITON_INTERPRET="1")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    verdicts = [line.split(":")[0] for line in lines if line.startswith(("PASS", "FAIL"))]
    assert verdicts == [
        "PASS logits (5 variants, cpu vs cpu)",
        "PASS quantized (blocks.gguf kept as blocks on cpu)",
        "PASS lossless (greedy speculative on cpu vs plain greedy)",
        "PASS memory (blocks.gguf on cpu, -c 64)",
    ]
    quantized = next(line for line in lines if line.startswith("PASS quantized"))
    assert "decoded bit-exact 15/15" in quantized and "Triton took 5/5 types" in quantized
    assert "fallback announced for Q5_0, IQ2_XXS" in quantized
    assert lines[-1] == "0 of 4 sections failed on cpu"
