"""Check `gemma-mtp imatrix` against llama.cpp on the embedded Gemma 3 270M target and demo drafter.

    scripts/build_llama_cpp.sh                      # once
    .venv/bin/python scripts/check_imatrix_llama_cpp.py [--llama-cpp DIR] [--chunks 4] [--no-manifest]

On one text (README.md and docs/*.md, one after another): our target imatrix and llama-imatrix's
(same -c and --chunks; names, counts and the relative difference of the mean squared activations
per entry, ||ours - theirs|| / ||theirs||: llama.cpp keeps KV in f16 and rounds activations, so
not bit-exact), then `llama-quantize --imatrix` with our target imatrix on the target (Q4_K_M and
IQ3_XXS, which needs one) and with our drafter imatrix (the target in the loop) on the drafter
(Q4_K_M): accepted, how many entries it loaded and which tensors it found none for. The result is
printed and stored under "imatrix" in tests/fixtures/llama_cpp/manifest.json. Never run by CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from llama_cpp_server import llama_cpp_dir

from gemma_mtp.demo import demo_drafter, demo_target
from gemma_mtp.gguf.imatrix import read_imatrix

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "fixtures" / "llama_cpp" / "manifest.json"
CHUNK = 512
THREADS = "2"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def _text(work: Path) -> tuple[Path, list[str]]:
    parts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    path = work / "calibration.txt"
    path.write_text("".join(p.read_text() for p in parts))
    return path, [str(p.relative_to(ROOT)) for p in parts]


def _ours(work: Path, text: Path, chunks: int, drafter: Path | None) -> Path:
    out = work / ("ours_drafter.gguf" if drafter else "ours_target.gguf")
    cmd = [sys.executable, "-m", "gemma_mtp.cli.main", "imatrix", "-m", str(demo_target()), "-f", str(text)]
    cmd += ["-o", str(out), "-c", str(CHUNK), "--chunks", str(chunks), "-t", THREADS, "--quiet"]
    cmd += ["-md", str(drafter)] if drafter else []
    done = _run(cmd)
    if done.returncode:
        raise SystemExit(f"gemma-mtp imatrix failed: {done.stderr.strip()}")
    return out


def compare(ours: Path, theirs: Path) -> dict:
    """Names, counts and per-entry relative difference of sums / counts."""
    a, b = read_imatrix(ours), read_imatrix(theirs)
    rel = {}
    for name in sorted(set(a.entries) & set(b.entries)):
        (sa, ca), (sb, cb) = a.entries[name], b.entries[name]
        ma, mb = sa / np.maximum(ca, 1)[:, None], sb / np.maximum(cb, 1)[:, None]
        rel[name] = float(np.linalg.norm(ma - mb) / np.linalg.norm(mb))
    worst = max(rel, key=rel.get)
    return {
        "entries": [len(a.entries), len(b.entries)],
        "same_names": set(a.entries) == set(b.entries),
        "counts_equal": all(np.array_equal(a.entries[n][1], b.entries[n][1]) for n in rel),
        "llama_datasets_hold_a_path": any("/" in d for d in b.datasets),
        "ours_datasets": a.datasets,
        "rel_diff_median": float(np.median(list(rel.values()))),
        "rel_diff_max": rel[worst],
        "rel_diff_worst_entry": worst,
    }


def quantize(llama: Path, imatrix: Path, model: Path, qtype: str, work: Path) -> dict:
    out = work / f"q_{model.stem}_{qtype}.gguf"
    done = _run(
        [str(llama / "bin" / "llama-quantize"), "--allow-requantize", "--imatrix", str(imatrix), str(model),
         str(out), qtype, THREADS]
    )  # fmt: skip
    log = done.stdout + done.stderr
    loaded = re.search(r"loaded (\d+) importance matrix entries", log)
    return {
        "model": model.name,
        "imatrix": imatrix.name,
        "type": qtype,
        "accepted": done.returncode == 0 and out.is_file(),
        "entries_loaded": int(loaded.group(1)) if loaded else None,
        "no_entry_for": sorted(set(re.findall(r"did not find weights for (\S+)", log))),
        "error": None if done.returncode == 0 else log.strip().splitlines()[-1][:300],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, default=None)
    parser.add_argument("--chunks", type=int, default=4, help="target chunks (the drafter takes half)")
    parser.add_argument("--no-manifest", action="store_true", help="only print")
    args = parser.parse_args(argv)
    llama = args.llama_cpp or llama_cpp_dir()
    if not (llama / ".done").is_file():
        raise SystemExit(f"{llama}: no finished llama.cpp build; run scripts/build_llama_cpp.sh")
    target, drafter = demo_target(), demo_drafter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text, parts = _text(work)
        ours_t = _ours(work, text, args.chunks, None)
        ours_d = _ours(work, text, max(1, args.chunks // 2), drafter)
        theirs = work / "llama_target.gguf"
        done = _run(
            [str(llama / "bin" / "llama-imatrix"), "-m", str(target), "-f", str(text), "-o", str(theirs),
             "-c", str(CHUNK), "--chunks", str(args.chunks), "-t", THREADS, "--no-ppl"]
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"llama-imatrix failed: {(done.stdout + done.stderr).strip()[-500:]}")
        result = {
            "made_by": "scripts/check_imatrix_llama_cpp.py",
            "llama_cpp": (llama / "COMMIT").read_text().strip() if (llama / "COMMIT").is_file() else None,
            "text": {"files": parts, "sha256": hashlib.sha256(text.read_bytes()).hexdigest()},
            "chunk_size": CHUNK,
            "chunks": {"target": args.chunks, "drafter": max(1, args.chunks // 2)},
            "target_vs_llama_imatrix": compare(ours_t, theirs),
            "drafter_entries": sorted(read_imatrix(ours_d).entries),
            "llama_quantize": [
                quantize(llama, ours_t, target, "Q4_K_M", work),
                quantize(llama, ours_t, target, "IQ3_XXS", work),
                quantize(llama, ours_d, drafter, "Q4_K_M", work),
            ],
        }
    print(json.dumps(result, indent=1))
    if not args.no_manifest:
        manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
        manifest["imatrix"] = result
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    ok = result["target_vs_llama_imatrix"]["same_names"] and all(
        q["accepted"] for q in result["llama_quantize"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
