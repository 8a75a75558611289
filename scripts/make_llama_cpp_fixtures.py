"""Make tests/fixtures/llama_cpp/: tiny Gemma 4 files written by llama.cpp itself, and what its
runtime computes on them, so that CI (which has no llama.cpp) holds our loader against llama.cpp.

    scripts/build_llama_cpp.sh                        # once: llama.cpp's tools into the cache
    .venv/bin/python scripts/make_llama_cpp_fixtures.py [--llama-cpp DIR] [--converter-only]

For each variant (E2B-like PLE + KV sharing, 26B-like MoE, 31B-like k_eq_v, 12B unified) the tiny
random checkpoint of `tests/hf_reference.py` is rebuilt from its seed (the CI tests rebuild the very
same one), given a tokenizer.json of exactly its vocabulary size, and converted by llama.cpp's
`convert_hf_to_gguf.py` (F32), with a dense assistant for each and a centroid assistant for E2B
(which llama.cpp's converter writes without its centroid head). With the built tools: each target
quantized by `llama-quantize` (Q8_0, Q4_K_M), and `llama-server` records its greedy tokens and top-5
log-probabilities along its own greedy path for a few prompts, plain and with `--spec-type draft-mtp`.
Everything lands in manifest.json (command, llama.cpp build, sha256 of each file). Never run by CI.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llama_cpp_server import LlamaServer, llama_cpp_dir

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "llama_cpp"

TARGET_NAMES = ("e2b", "moe", "dense31b", "unified")  # tests/llama_cpp_checkpoints.py BUILDERS
ASSISTANT_SEED = 5
# (target, ordered): the assistants converted; llama.cpp's converter drops a centroid head
ASSISTANTS = [("e2b", False), ("e2b", True), ("moe", False), ("dense31b", False), ("unified", False)]
QUANTS = ("Q8_0", "Q4_K_M")
QUANTIZED = ("e2b",)  # quantized fixtures only for this one: the fixtures stay well under 5 MB
PROMPTS = [[2, 17, 45, 99, 120, 7], [2, 200, 31, 31, 64], [2, 5, 250, 128, 9, 77, 13, 180]]
N_PREDICT = 12
TOP_K = 5


def _tests_module(name: str):
    """A module of tests/ (hf_reference, llama_cpp_checkpoints), loaded by path: the CI tests use
    the same code to rebuild the checkpoints, and scripts are not on the tests' import path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # llama_cpp_checkpoints imports hf_reference
    spec.loader.exec_module(module)
    return module


def build_checkpoints(work: Path) -> dict[str, Path]:
    ref = _tests_module("hf_reference")
    checkpoints = _tests_module("llama_cpp_checkpoints")
    dirs: dict[str, Path] = {}
    built = {}
    for name, (builder, seed) in checkpoints.BUILDERS.items():
        built[name] = builder(work / name, seed=seed)
        dirs[name] = built[name].path
    for target, ordered in ASSISTANTS:
        name = f"{target}_assistant_{'centroids' if ordered else 'dense'}"
        reference = ref.build_assistant(
            work / name, built[target], use_ordered_embeddings=ordered, seed=ASSISTANT_SEED
        )
        dirs[name] = reference.path
    for path in dirs.values():
        checkpoints.write_tokenizer(path, ref.VOCAB)
    return dirs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def converter(llama: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py as the build kept it (or, mid-build, in the unpacked sdist)."""
    kept = llama / "convert_hf_to_gguf.py"
    return (
        kept
        if kept.is_file()
        else llama / "work" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / kept.name
    )


def convert(llama: Path, hf_dir: Path, out: Path) -> list[str]:
    cmd = [sys.executable, str(converter(llama)), str(hf_dir), "--outfile", str(out), "--outtype", "f32"]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"llama.cpp's converter failed on {hf_dir.name}:\n{done.stderr[-3000:]}")
    return ["python", "convert_hf_to_gguf.py", hf_dir.name, "--outfile", out.name, "--outtype", "f32"]


def quantize(llama: Path, src: Path, out: Path, qtype: str) -> list[str]:
    run(
        [str(llama / "bin" / "llama-quantize"), str(src), str(out), qtype],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return ["llama-quantize", src.name, out.name, qtype]


def record(llama: Path, target: Path, drafter: Path | None) -> list[dict]:
    """llama-server's greedy continuation of each prompt with its top-5 log-probabilities."""
    rows = []
    with LlamaServer(llama, target, drafter) as server:
        for prompt in PROMPTS:
            tokens, top = server.greedy(prompt, N_PREDICT, TOP_K)
            rows.append({"prompt": prompt, "tokens": tokens, "top_logprobs": top})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, default=None, help="the build dir (default: the cache's)")
    parser.add_argument("--converter-only", action="store_true", help="only llama.cpp's converter (no tools)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    llama = args.llama_cpp or llama_cpp_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_checkpoints(Path(tmp))
        refused: dict[str, str] = {}
        for name, hf_dir in dirs.items():
            out = args.out / f"{name}.f32.gguf"
            if name.split("_assistant")[0] in refused:
                refused[name] = "its target was refused"
                continue
            try:
                files[out.name] = {"command": convert(llama, hf_dir, out), "checkpoint": name}
            except RuntimeError as exc:  # a variant llama.cpp's converter does not accept
                refused[name] = str(exc).strip().splitlines()[-1]
        if not args.converter_only:
            for name in QUANTIZED:
                src = args.out / f"{name}.f32.gguf"
                for qtype in QUANTS:
                    out = args.out / f"{name}.{qtype.lower()}.gguf"
                    files[out.name] = {"command": quantize(llama, src, out, qtype), "checkpoint": name}
            for name in [t for t in TARGET_NAMES if t not in refused]:
                kinds = ("f32", *[q.lower() for q in QUANTS]) if name in QUANTIZED else ("f32",)
                for kind in kinds:
                    target = args.out / f"{name}.{kind}.gguf"
                    drafter = args.out / f"{name}_assistant_dense.f32.gguf"
                    outputs[target.name] = {
                        "plain": record(llama, target, None),
                        "draft-mtp": record(llama, target, drafter),
                    }
    for name, entry in files.items():
        entry["sha256"] = sha256(args.out / name)
        entry["bytes"] = (args.out / name).stat().st_size
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(
        {
            "made_by": "scripts/make_llama_cpp_fixtures.py",
            "llama_cpp": (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").is_file() else None,
            "source": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp",
            "checkpoints": {
                "builders": "tests/llama_cpp_checkpoints.py BUILDERS",
                "targets": list(TARGET_NAMES),
                "assistant_seed": ASSISTANT_SEED,
                "assistants": ASSISTANTS,
            },
            "files": files,
            "refused_by_llama_cpp_converter": refused,
        }
    )
    if outputs:
        manifest["llama_cpp_outputs"] = outputs
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(args.out / "__pycache__", ignore_errors=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
