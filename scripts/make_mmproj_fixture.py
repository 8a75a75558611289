"""Make tests/fixtures/llama_cpp_mmproj/: the vision tower of tests/media_reference.py's tiny E2B-like
checkpoint (rebuilt from its seed, as the CI test rebuilds it) as llama.cpp's own converter writes
it (`convert_hf_to_gguf.py --mmproj --outtype f32`), with a manifest (command, sha256). Never run by CI.

    .venv/bin/python scripts/make_mmproj_fixture.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llama_cpp_server import llama_cpp_dir

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "llama_cpp_mmproj"
NAME = "e2b_vision.mmproj.f32.gguf"


def _tests_module(name: str):
    """A module of tests/, loaded by path (scripts are not on the tests' import path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def converter(llama: Path) -> Path:
    kept = llama / "convert_hf_to_gguf.py"
    vendored = llama / "work" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / kept.name
    return vendored if vendored.is_file() else kept


def main() -> int:
    _tests_module("hf_reference")
    mref = _tests_module("media_reference")
    llama = llama_cpp_dir()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "e2b_vision"
        mref.build_e2b_vision(hf_dir)
        script = converter(llama)
        cmd = [
            sys.executable,
            str(script),
            str(hf_dir),
            "--mmproj",
            "--outtype",
            "f32",
            "--outfile",
            str(OUT / NAME),
        ]
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
    manifest = {
        NAME: {
            "checkpoint": "tests/media_reference.py build_e2b_vision (seed 7)",
            "command": ["python", "convert_hf_to_gguf.py", "e2b_vision", "--mmproj", "--outtype", "f32"],
            "llama_cpp": (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").is_file() else "0.3.36",
            "sha256": hashlib.sha256((OUT / NAME).read_bytes()).hexdigest(),
        }
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {OUT / NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
