"""llama-server vs `gemma-mtp serve` on the same GGUF and the same prompts, through one client:
`gemma-mtp bench --endpoint`.

Each server is started on a free loopback port, benched, and stopped before the next one starts
(one at a time: on a small machine two servers would measure each other). The model is the
embedded Gemma 3 270M Q4_K_M (`gemma_mtp.assets`); llama-server is the vendored build of
scripts/build_llama_cpp.sh. Configurations, each with its plain baseline on the same engine:

  llama-server  plain | ngram-simple | draft-simple (the 270M as its own draft) | draft-mtp (our drafter)
  gemma-mtp     plain | ngram        | draft        (the 270M as its own draft) | mtp (our drafter)

A configuration the server refuses (llama.cpp's draft-mtp does not know a Gemma 4 assistant over a
Gemma 3 target) is a row saying so, with the end of its log. Speculative statistics are each
server's own: `timings.draft_n` / `draft_n_accepted` in the last streamed chunk, and Prometheus
counters from `/metrics` (llama-server with `--metrics`; ours always).

    .venv/bin/python benchmarks/bench_endpoint_llama_server.py            # the real run
    .venv/bin/python benchmarks/bench_endpoint_llama_server.py -n 8 --reps 1 --only plain,ngram  # smoke

Appends rows to benchmarks/results/endpoint_llama_server.jsonl and prints one side-by-side table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from _common import REPO, RESULTS, append_jsonl, cpu_name, format_table, git_commit, timestamp

from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.demo import demo_drafter

STRATEGIES = ("plain", "ngram", "draft", "mtp")


def llama_cpp_bin() -> Path:
    cache = Path(os.environ.get("GEMMA_MTP_CACHE") or Path.home() / ".cache" / "gemma-mtp")
    return cache / "llama.cpp" / "0.3.36" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_flags(strategy: str, model: Path, drafter: Path, n_max: int) -> list[str]:
    return {
        "plain": [],
        "ngram": ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3"]
        + ["--spec-ngram-simple-size-m", str(n_max)],
        "draft": ["--spec-type", "draft-simple", "-md", str(model), "--spec-draft-n-max", str(n_max)],
        "mtp": ["--spec-type", "draft-mtp", "-md", str(drafter), "--spec-draft-n-max", str(n_max)],
    }[strategy]


def ours_flags(strategy: str, model: Path, drafter: Path, n_max: int) -> list[str]:
    return {
        "plain": ["--spec-type", "none"],
        "ngram": ["--spec-type", "ngram", "--spec-draft-n-max", str(n_max)],
        "draft": ["-md", str(model), "--spec-type", "draft", "--spec-draft-n-max", str(n_max)],
        "mtp": ["-md", str(drafter), "--spec-type", "mtp", "--spec-draft-n-max", str(n_max)],
    }[strategy]


class Refused(RuntimeError):
    """The server exited or never became ready; the message ends with its log."""


@contextlib.contextmanager
def server(argv: list[str], port: int, log: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """Start `argv`, wait for GET /health 200, yield the base URL, stop it."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise Refused(f"exited with {proc.returncode}: {_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise Refused(f"not ready after {timeout_s:.0f} s: {_tail(log)}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, n: int = 6) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-900:]


def bench(url: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """`gemma-mtp bench --endpoint URL` with this run's workload; its rows.jsonl."""
    cmd = [str(Path(sys.executable).with_name("gemma-mtp")), "bench", "--endpoint", url, "--out", str(out)]
    cmd += [
        "-n",
        str(args.n_predict),
        "--reps",
        str(args.reps),
        "--temp",
        str(args.temp),
        "--prompts",
        args.prompts,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--n-predict", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--n-max", type=int, default=3, help="draft length for every speculative configuration")
    p.add_argument("--prompts", default="builtin", help="builtin | seeds | FILE (bench's --prompts)")
    p.add_argument("--only", default=",".join(STRATEGIES), help=f"strategies to run ({','.join(STRATEGIES)})")
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()

    model, drafter = gemma3_270m_gguf(), demo_drafter()
    llama = llama_cpp_bin() / "llama-server"
    if not llama.is_file():
        sys.exit(f"{llama} is missing: build it with scripts/build_llama_cpp.sh")
    ours = Path(sys.executable).with_name("gemma-mtp")
    strategies = [s for s in args.only.split(",") if s]
    engines = {
        "llama-server": lambda s, port: (
            [str(llama), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
            + ["-c", "2048", "-t", str(args.threads), "-np", "1", "--no-webui", "--metrics"]
            + llama_server_flags(s, model, drafter, args.n_max)
        ),
        "gemma-mtp": lambda s, port: (
            [str(ours), "serve", "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
            + ["-c", "2048", "-t", str(args.threads), "--no-profile"]
            + ours_flags(s, model, drafter, args.n_max)
        ),
    }
    table, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        for strategy in strategies:
            for engine, argv_of in engines.items():
                port = free_port()
                argv = argv_of(strategy, port)
                print(f"[{engine} {strategy}] {' '.join(argv[1:])}", file=sys.stderr, flush=True)
                log = Path(tmp) / f"{engine}-{strategy}.log"
                row = {"engine": engine, "strategy": strategy, "flags": " ".join(argv[1:])}
                try:
                    with server(argv, port, log) as url:
                        rows = bench(url, args, Path(tmp) / f"{engine}-{strategy}")
                except Refused as exc:
                    row["refused"] = str(exc)
                    print(f"  refused: {exc}", file=sys.stderr)
                else:
                    overall = next(r for r in rows if r["category"] == "all")
                    row |= {k: overall.get(k) for k in _KEPT}
                table.append(row)
                results.append({**row, "model": str(model), "drafter": str(drafter), "n_max": args.n_max})
    common = {
        "git_commit": git_commit(),
        "timestamp": timestamp(),
        "cpu": cpu_name(),
        "threads": args.threads,
    }
    common |= {
        "n_predict": args.n_predict,
        "reps": args.reps,
        "temperature": args.temp,
        "prompts": args.prompts,
    }
    append_jsonl(RESULTS / "endpoint_llama_server.jsonl", [{**common, **r} for r in results])
    _print(table, strategies)
    return 0


_KEPT = (
    "tokens_per_s",
    "tokens_per_s_std",
    "acceptance",
    "acceptance_by_position",
    "mean_accepted_length",
    "drafted",
    "accepted",
    "n_decoded",
    "timing_source",
)


def _print(table: list[dict], strategies: list[str]) -> None:
    plain = {r["engine"]: r.get("tokens_per_s") for r in table if r["strategy"] == "plain"}
    shown = []
    for r in table:
        base = plain.get(r["engine"])
        tps = r.get("tokens_per_s")
        shown.append(
            {
                "engine": r["engine"],
                "strategy": r["strategy"],
                "tok/s": "-" if tps is None else f"{tps:.1f} ± {r.get('tokens_per_s_std') or 0:.1f}",
                "vs plain": "-" if not (tps and base) else f"{tps / base:.2f}x",
                "acceptance": "-" if r.get("acceptance") is None else f"{r['acceptance']:.2f}",
                "by position": " / ".join(
                    f"{a:.2f}" for a in r.get("acceptance_by_position") or [] if a is not None
                )
                or "-",
                "accepted/drafted": f"{r.get('accepted')}/{r.get('drafted')}" if r.get("drafted") else "-",
                "mean len": "-"
                if r.get("mean_accepted_length") is None
                else f"{r['mean_accepted_length']:.2f}",
                "timing": r.get("timing_source") or "-",
                "note": ("refused: " + r["refused"][:160]) if "refused" in r else "",
            }
        )
    print(format_table(shown, list(shown[0]) if shown else []))
    print(f"\n(rows appended to {(RESULTS / 'endpoint_llama_server.jsonl').relative_to(REPO)})")


if __name__ == "__main__":
    sys.exit(main())
