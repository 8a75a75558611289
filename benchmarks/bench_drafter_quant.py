"""The demo drafter quantized down, with and without its own imatrix: what MTP acceptance and speed cost.

    python benchmarks/bench_drafter_quant.py [--types Q4_K_M,Q3_K_M,Q2_K] [--n-max 3] [--p-min 0]
        [-n 64] [--reps 3] [--temp 0.3] [--prompts builtin] [--out DIR] [--calibration FILE]

Steps, all through the product's own commands (each printed before it runs):
1. `gemma-mtp imatrix -m TARGET -md DRAFTER -f TEXT`: the drafter's importance matrix with the target
   in the loop (the target runs the calibration text, the drafter drafts at every position on the
   target's states). TEXT defaults to the drafter's own training corpus (assets/corpus/*.jsonl),
   which holds none of the bench prompts.
2. `gemma-mtp quantize DRAFTER OUT TYPE [--imatrix FILE]` for every type, from the shipped drafter
   (itself Q8_0, so these are re-quantizations: --allow-requantize, and --allow-low-bit-drafter for
   the types the drafter policy guards).
3. `gemma-mtp bench -md <every file> --spec-type mtp ... --reps R --temp T`: one run, the drafters
   interleaved, plain decoding of the same target as the baseline; rows.jsonl and report.md in
   DIR/bench.

The drafter's matrices are mostly 128 wide (its width), narrower than the K-quants' 256-wide
super-blocks, so llama-quantize's fallbacks apply to them (the table lists each file's tensor
types). Q8_0 ignores an imatrix (as in ggml), so it appears once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _common import REPO, RESULTS, format_table, git_commit, git_dirty, timestamp
from gguf import GGUFReader

from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.demo import demo_drafter

GEMMA_MTP = [sys.executable, "-m", "gemma_mtp.cli.main"]


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def _calibration_text(path: Path) -> Path:
    """The training corpus as one text file (its documents one after another)."""
    parts = []
    for jsonl in sorted((REPO / "assets" / "corpus").glob("*.jsonl")):
        for line in jsonl.read_text().splitlines():
            if line.strip():
                parts.append(json.loads(line)["text"])
    path.write_text("\n\n".join(parts))
    return path


def _types_of(path: Path) -> str:
    counts = Counter(t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) > 1)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--n-max", default="3")
    ap.add_argument("--p-min", default="0")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--temp", default="0.3")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--chunk", type=int, default=256, help="imatrix chunk size in tokens")
    ap.add_argument("--calibration", type=Path, help="calibration text (default: assets/corpus)")
    ap.add_argument("--out", type=Path, default=RESULTS / "drafter_quant")
    ap.add_argument("--files-only", action="store_true", help="make the files, don't bench")
    ap.add_argument("--reuse", action="store_true", help="keep files already made in DIR/files")
    args = ap.parse_args()

    target, drafter = gemma3_270m_gguf(), demo_drafter()
    out: Path = args.out
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    imatrix = files / "drafter.imatrix.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        text = args.calibration or _calibration_text(Path(tmp) / "corpus.txt")
        if not (args.reuse and imatrix.exists()):
            _run([*GEMMA_MTP, "imatrix", "-m", target, "-md", drafter, "-f", text, "-o", imatrix,
                  "-c", args.chunk, "-t", args.threads, "--quiet"])  # fmt: skip
    drafters = [files / "drafter.Q8_0.gguf"]
    shutil.copyfile(drafter, drafters[0])
    for qtype in args.types.split(","):
        for weighted in (False, True):
            dest = files / f"drafter.{qtype}{'.imatrix' if weighted else ''}.gguf"
            cmd = [
                *GEMMA_MTP,
                "quantize",
                drafter,
                dest,
                qtype,
                "--allow-requantize",
                "--allow-low-bit-drafter",
            ]
            if weighted:
                cmd += ["--imatrix", imatrix]
            if not (args.reuse and dest.exists()):
                _run(cmd)
            drafters.append(dest)
    table = [
        {"drafter": p.name, "MB": p.stat().st_size / 1e6, "matrix types": _types_of(p)} for p in drafters
    ]
    print(format_table(table, ["drafter", "MB", "matrix types"]))
    if args.files_only:
        return 0
    bench_dir = out / "bench"
    each = [a for p in drafters for a in ("-md", p)]
    _run([*GEMMA_MTP, "bench", "-m", target, *each, "--spec-type", "mtp",
          "--n-max", args.n_max, "--p-min", args.p_min, "-n", args.n, "--reps", args.reps,
          "--temp", args.temp, "--prompts", args.prompts, "-t", args.threads, "--out", bench_dir])  # fmt: skip
    (out / "files.json").write_text(
        json.dumps(
            {
                "commit": git_commit(),
                "dirty": git_dirty(),
                "time": timestamp(),
                "drafters": {p.name: {"bytes": p.stat().st_size, "types": _types_of(p)} for p in drafters},
            },
            indent=1,
        )
    )
    print(f"report: {bench_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
