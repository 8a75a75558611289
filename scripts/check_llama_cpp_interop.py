"""Load each of gemma-mtp's converter and quantizer outputs in llama.cpp and check its greedy
output, plain and with `--spec-type draft-mtp`, against transformers' greedy on the same checkpoint.

    scripts/build_llama_cpp.sh                      # once
    .venv/bin/python scripts/check_llama_cpp_interop.py [--llama-cpp DIR] [--no-manifest]

Files: each tiny target (tests/llama_cpp_checkpoints.py's E2B/MoE/31B/unified, from their seeds) as our
`convert` writes it (F32) and as our `quantize` makes it (Q8_0, Q4_K_M); each assistant as our
mainline `convert` writes it (dense; centroid with the head left out, the default) and, to confirm
the refusals, a centroid assistant with `--keep-centroids` and a dense one in the legacy and ik layouts. F32 outputs must equal transformers'
greedy; quantized files are reported (their rounding may change a near tie on these tiny random
models), and with a drafter llama.cpp's output must equal its own plain output (lossless). The result table is
printed and stored under "interop" in tests/fixtures/llama_cpp/manifest.json. Never run by CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from llama_cpp_server import LlamaServer, llama_cpp_dir

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "fixtures" / "llama_cpp" / "manifest.json"
QUANTS = ("Q8_0", "Q4_K_M")
PROMPTS = [[2, 17, 45, 99, 120, 7], [2, 200, 31, 31, 64]]
N_PREDICT = 12


def _tests_module(name: str):
    """A module of tests/, loaded by path (the checkpoints are the fixtures' ones)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _llama_greedy(llama: Path, target: Path, drafter: Path | None) -> list[list[int]] | str:
    """llama-server's greedy tokens per prompt, or the reason it refused the files."""
    try:
        with LlamaServer(llama, target, drafter) as server:
            return [server.greedy(prompt, N_PREDICT, 1)[0] for prompt in PROMPTS]
    except RuntimeError as exc:
        text = str(exc)
        for needle in ("what()", "GGML_ASSERT", "error loading model", "failed to load"):
            lines = [line.strip() for line in text.splitlines() if needle in line]
            if lines:
                return "refused: " + lines[0][:300]
        return "refused: " + text.splitlines()[0][:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, default=None)
    parser.add_argument("--no-manifest", action="store_true", help="only print")
    args = parser.parse_args(argv)
    llama = args.llama_cpp or llama_cpp_dir()
    ref = _tests_module("hf_reference")
    checkpoints = _tests_module("llama_cpp_checkpoints")
    write_tokenizer = checkpoints.write_tokenizer
    from gemma_mtp.tools.convert import convert_hf_to_gguf
    from gemma_mtp.tools.quantize import quantize_gguf

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (builder, seed) in checkpoints.BUILDERS.items():
            target = builder(work / name, seed=seed)
            write_tokenizer(target.path, ref.VOCAB)
            want = [ref.hf_greedy(target.model, prompt, N_PREDICT) for prompt in PROMPTS]
            files = {"F32": convert_hf_to_gguf(target.path, work / f"{name}.f32.gguf")}
            for qtype in QUANTS:
                out = work / f"{name}.{qtype.lower()}.gguf"
                quantize_gguf(files["F32"], out, qtype)
                files[qtype] = out
            drafters = {}
            for ordered in (False, True) if name == "e2b" else (False,):
                kind = "centroids" if ordered else "dense"
                assistant = ref.build_assistant(
                    work / f"{name}_a_{kind}", target, use_ordered_embeddings=ordered
                )
                write_tokenizer(assistant.path, ref.VOCAB)
                drafters[f"assistant {kind}"] = convert_hf_to_gguf(
                    assistant.path, work / f"{name}_a_{kind}.gguf"
                )
                if ordered:
                    drafters["assistant centroids --keep-centroids"] = convert_hf_to_gguf(
                        assistant.path, work / f"{name}_a_keep.gguf", keep_centroids=True
                    )
                elif name == "e2b":  # the other layouts, which llama.cpp does not know
                    for layout in ("legacy", "ik"):
                        drafters[f"assistant dense --layout {layout}"] = convert_hf_to_gguf(
                            assistant.path, work / f"{name}_a_{layout}.gguf", layout=layout
                        )
            for qtype, path in files.items():
                plain = _llama_greedy(llama, path, None)
                rows.append(_row(name, qtype, None, plain, want))
                for label, drafter in drafters.items():
                    if qtype != "F32" and "--" in label:
                        continue
                    row = _row(name, qtype, label, _llama_greedy(llama, path, drafter), want)
                    row["equals_llama_plain"] = row.get("tokens") == plain  # draft-mtp is lossless
                    rows.append(row)
    print(f"{'target':<9}{'type':<7}{'drafter (our mainline convert)':<40}loads  =HF    =plain")
    for row in rows:
        print(
            f"{row['target']:<9}{row['type']:<7}{row['drafter'] or 'plain':<40}"
            f"{row['loads']!s:<7}{row['equals_transformers']!s:<7}{row.get('equals_llama_plain', '')!s:<7}"
            f"{row.get('refusal', '')}"
        )
    if not args.no_manifest:
        manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
        commit = (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").is_file() else None
        manifest["interop"] = {
            "made_by": "scripts/check_llama_cpp_interop.py",
            "llama_cpp": commit,
            "prompts": PROMPTS,
            "n_predict": N_PREDICT,
            "rows": rows,
        }
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    usable = [r for r in rows if "--" not in (r["drafter"] or "")]  # the refusals we expect
    f32_ok = all(r["equals_transformers"] for r in usable if r["type"] == "F32")
    lossless = all(r.get("equals_llama_plain", True) for r in usable)
    return 0 if all(r["loads"] for r in usable) and f32_ok and lossless else 1


def _row(name: str, qtype: str, drafter: str | None, got, want) -> dict:
    row = {"target": name, "type": qtype, "drafter": drafter, "loads": not isinstance(got, str)}
    if isinstance(got, str):
        row.update(equals_transformers=False, refusal=got)
    else:
        row.update(equals_transformers=got == want, tokens=got)
    return row


if __name__ == "__main__":
    sys.exit(main())
