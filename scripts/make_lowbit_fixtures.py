"""Make tests/fixtures/llama_cpp/lowbit_blocks.gguf: low-bit and IQ blocks written by llama.cpp itself.

    scripts/build_llama_cpp.sh                          # once: llama.cpp's tools into the cache
    .venv/bin/python scripts/make_lowbit_fixtures.py [--llama-cpp DIR] [--rows 16]

The embedded Gemma 3 270M Q4_K_M is quantized by the vendored `llama-quantize` to every low-bit
file type (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_M, IQ3_XXS, IQ3_M, IQ4_XS, Q2_K, Q3_K_M) with an
importance matrix that `gemma-mtp imatrix` computes on the training corpus (llama-quantize refuses
the IQ1/IQ2 types without one). From those files, the first `--rows` rows of one tensor of each
block type they hold go into one small GGUF, unchanged, so CI (which has no llama.cpp) can check
that our kernel and our torch decoder read blocks that llama.cpp's quantizer actually wrote, not
only random bytes. Provenance (llama.cpp build, commands, sha256 of each source tensor's bytes)
goes to manifest.json under "lowbit_blocks". Never run by CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "llama_cpp"
FILE_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_M", "IQ3_XXS", "IQ3_M", "IQ4_XS", "Q2_K", "Q3_K_M")
WANTED = {
    "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M",
}  # fmt: skip


def _llama_cpp(arg: Path | None) -> Path:
    if arg:
        return arg
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama_cpp.sh")], capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(f"scripts/build_llama_cpp.sh failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _corpus(path: Path) -> Path:
    parts = []
    for jsonl in sorted((ROOT / "assets" / "corpus").glob("*.jsonl")):
        parts += [json.loads(line)["text"] for line in jsonl.read_text().splitlines() if line.strip()]
    path.write_text("\n\n".join(parts))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", type=Path, help="the build directory (default: build or find it)")
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args()
    from gemma_mtp.assets import gemma3_270m_gguf

    llama = _llama_cpp(args.llama_cpp)
    quantize = llama / "bin" / "llama-quantize"
    commit = (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").exists() else "unknown"
    source = gemma3_270m_gguf()
    picked: dict[str, tuple[str, str, np.ndarray, tuple[int, int]]] = {}
    commands = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        imatrix = work / "target.imatrix.gguf"
        cmd = [sys.executable, "-m", "gemma_mtp.cli.main", "imatrix", "-m", str(source), "-f",
               str(_corpus(work / "corpus.txt")), "-o", str(imatrix), "-c", "256", "--quiet"]  # fmt: skip
        subprocess.run(cmd, check=True)
        commands.append("gemma-mtp imatrix -m gemma-3-270m-q4_k_m.gguf -f assets/corpus (joined) -c 256")
        for ftype in FILE_TYPES:
            dest = work / f"{ftype}.gguf"
            cmd = [
                str(quantize),
                "--allow-requantize",
                "--imatrix",
                str(imatrix),
                str(source),
                str(dest),
                ftype,
                "2",
            ]
            subprocess.run(cmd, check=True, capture_output=True)
            commands.append(
                f"llama-quantize --allow-requantize --imatrix target.imatrix.gguf SRC {ftype}.gguf {ftype} 2"
            )
            for t in GGUFReader(dest).tensors:
                name = t.tensor_type.name
                if name in WANTED and name not in picked and len(t.shape) == 2:
                    rows = np.array(t.data[: args.rows])  # [rows, bytes per row], the file's bytes
                    sha = hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()
                    picked[name] = (ftype, t.name, rows, (int(t.shape[0]), int(t.shape[1])), sha)
    missing = sorted(WANTED - picked.keys())
    if missing:
        sys.exit(f"no tensor of {', '.join(missing)} in llama-quantize's outputs")
    out = OUT / "lowbit_blocks.gguf"
    writer = GGUFWriter(str(out) + ".tmp", "lowbit-blocks")
    record = {}
    for qtype in sorted(picked):
        ftype, name, rows, shape, sha = picked[qtype]
        writer.add_tensor(f"{qtype}.{name}", rows, raw_dtype=GGMLQuantizationType[qtype])
        record[qtype] = {
            "file_type": ftype,
            "tensor": name,
            "shape": list(shape),
            "rows": args.rows,
            "sha256": sha,
        }
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    Path(str(out) + ".tmp").replace(out)
    manifest_path = OUT / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["lowbit_blocks"] = {
        "made_by": "scripts/make_lowbit_fixtures.py",
        "llama_cpp": commit,
        "source": source.name,
        "commands": commands,
        "file": out.name,
        "file_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "tensors": record,
    }
    tmp_manifest = manifest_path.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp_manifest.replace(manifest_path)
    print(f"wrote {out} ({out.stat().st_size} bytes): {', '.join(sorted(picked))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
