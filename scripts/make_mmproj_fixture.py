"""Make tests/fixtures/llama_cpp_mmproj/: the media towers of the tests' tiny E2B-like checkpoints
(rebuilt from their seeds, as the CI tests rebuild them) as llama.cpp's own converter writes them
(`convert_hf_to_gguf.py --mmproj`), with a manifest (command, sha256). Never run by CI.

- e2b_vision.mmproj.f32.gguf: tests/media_reference.py build_e2b_vision (the vision tower only);
- e2b_vision_audio.mmproj.f32.gguf: tests/audio_reference.py build_e2b_audio with a vision tower
  (both towers, the audio one with 4 second-stage subsampling channels to keep the file small); for
  that checkpoint the manifest also records, per other --outtype (f16, bf16, q8_0), a digest of the
  converter's tensors and keys (`audio_reference.gguf_digest`), which the tests compare with ours.

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
VISION = "e2b_vision.mmproj.f32.gguf"
BOTH = "e2b_vision_audio.mmproj.f32.gguf"
BOTH_AUDIO = {"subsampling_conv_channels": [128, 4]}  # (tests/test_audio_mmproj.py builds the same)
OTHER_TYPES = ("f16", "bf16", "q8_0")


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


def convert(script: Path, hf_dir: Path, out: Path, outtype: str) -> None:
    cmd = [sys.executable, str(script), str(hf_dir), "--mmproj", "--outtype", outtype, "--outfile", str(out)]
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(1)


def main() -> int:
    _tests_module("hf_reference")
    mref = _tests_module("media_reference")
    aref = _tests_module("audio_reference")
    llama = llama_cpp_dir()
    script = converter(llama)
    version = (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").is_file() else "0.3.36"
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    with tempfile.TemporaryDirectory() as tmp:
        vision_dir = Path(tmp) / "e2b_vision"
        mref.build_e2b_vision(vision_dir)
        convert(script, vision_dir, OUT / VISION, "f32")
        manifest[VISION] = {
            "checkpoint": "tests/media_reference.py build_e2b_vision (seed 7)",
            "command": ["python", "convert_hf_to_gguf.py", "e2b_vision", "--mmproj", "--outtype", "f32"],
            "llama_cpp": version,
            "sha256": hashlib.sha256((OUT / VISION).read_bytes()).hexdigest(),
        }
        both_dir = Path(tmp) / "e2b_vision_audio"
        aref.build_e2b_audio(both_dir, vision=True, audio=BOTH_AUDIO)
        convert(script, both_dir, OUT / BOTH, "f32")
        digests = {}
        for outtype in OTHER_TYPES:
            other = Path(tmp) / f"both.{outtype}.gguf"
            convert(script, both_dir, other, outtype)
            digests[outtype] = aref.gguf_digest(other)
        manifest[BOTH] = {
            "checkpoint": f"tests/audio_reference.py build_e2b_audio (seed 13, vision=True, audio={BOTH_AUDIO})",
            "command": [
                "python",
                "convert_hf_to_gguf.py",
                "e2b_vision_audio",
                "--mmproj",
                "--outtype",
                "f32",
            ],
            "llama_cpp": version,
            "sha256": hashlib.sha256((OUT / BOTH).read_bytes()).hexdigest(),
            "digests_by_outtype": digests,
        }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {OUT / VISION} and {OUT / BOTH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
