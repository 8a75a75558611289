"""Gemma 4 shapes (scripts/make_shaped_gguf.py) on the CPU, ours vs llama.cpp's own tools, one run.

    nice .venv/bin/python benchmarks/bench_shapes_vs_llama_cpp.py --dir /tmp/shapes/e2b \
        [--reps 3] [--only plain,prefill,mtp,forward] [-n 128] [--prompt-tokens 512] \
        [--n-max 1,2,3,4] [--rates 0.89,0.83,0.74,0.64] [--positions 1,2,4,8] [-t 2] \
        [--dense-assistant] [--out DIR]

The files are the target and assistant GGUFs named by DIR/manifest.json. Measurements (the engines
alternate within every rep, so a change in machine load hits both alike):
- plain: greedy decode of `-n` tokens after a 6-token prompt, tokens/s after the first round
  (ours: stamps as `Engine.stream` yields; llama-server: its first token is free as well). llama.cpp: `llama-bench -n N` (tg: from an empty context).
- prefill: a `--prompt-tokens` prompt, tokens/s. Ours: the engine's prompt time (prefill + the
  first token); llama.cpp: `llama-bench -p N` (pp).
- mtp: `-n` tokens at the synthetic per-position acceptance `--rates` (llama.cpp's
  `--spec-synth-rates`, benchmarking only: the drafter and verify forward run in full, only the
  accept decision is imposed; the text is invalid, rows say so) for each n_max, decode tokens/s.
  Ours: `SpecOptions(synthetic=SyntheticAcceptance(...))`; llama.cpp: `llama-server --spec-type
  draft-mtp -md ... --spec-synth-rates` (only llama-server implements it, not
  llama-speculative-simple), its `timings.predicted_per_second` of one /completion request after a
  warm-up request, a fresh server per (rep, n_max). llama.cpp cannot load an assistant that
  carries the centroid head, so it gets the manifest's dense `assistant` file; ours gets
  `assistant_centroids` (what it would run) unless `--dense-assistant`.
- forward: the cost of one target forward over T new positions, ms. Ours: `forward` + `logits`
  at every position (a verify of T - 1 drafts) after a short context, median of 3 calls;
  llama.cpp: `llama-bench -p T` (one batch of T tokens, logits at the last only).
- peak RSS: ours from the worker's /proc/self/status VmHWM; llama-bench's from `/usr/bin/time -v`;
  llama-server's from its /proc/PID/status VmHWM before it is stopped.
Ours runs in one long-lived child process (this script with --worker, loaded once, like
llama-server), each measurement a call in it, so its peak RSS is over all of them. Both use `-t`
threads. Rows (one per engine, measurement, n_max/T and rep, with the median over reps; then
engine "ours/llama.cpp": > 1 means ours is better, for ms and MB rows too) go to OUT/rows.jsonl,
the table to OUT/table.md (and stdout; `ours vs own`: mtp / our plain, forward T / our forward 1,
peak RSS / (files + KV + 300 MB)), the plot to OUT/plot.png. Timings mean nothing on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import RESULTS, cpu_name, format_table, git_commit, git_dirty, median, status_mb, timestamp

MEASUREMENTS = ("plain", "prefill", "mtp", "forward")
SHORT_PROMPT = [2, 818, 5279, 529, 7001, 563]  # any ids: the weights are random
LLAMA_CPP_VERSION = "0.3.36"
BETTER_HIGH = {"tokens/s": True, "ms": False, "MB": False}  # unit -> higher is better


def llama_bin() -> Path:
    """scripts/build_llama_cpp.sh's build ($GEMMA_MTP_CACHE or ~/.cache/gemma-mtp), as
    scripts/llama_cpp_server.py finds it."""
    cache = Path(os.environ.get("GEMMA_MTP_CACHE") or Path.home() / ".cache" / "gemma-mtp")
    return cache / "llama.cpp" / LLAMA_CPP_VERSION / "bin"


def long_prompt(n: int, vocab: int = 262_144) -> list[int]:
    return [2] + [(1_000 + 7_919 * i) % vocab for i in range(n - 1)]


# ---------------------------------------------------------------- ours (in the --worker child)
class Worker:
    """Our engine in a child process: one JSON command per stdin line, one JSON answer per line."""

    def __init__(self, target: Path, assistant: Path, threads: int, ctx: int) -> None:
        cmd = [sys.executable, __file__, "--worker", json.dumps([str(target), str(assistant), threads, ctx])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"our worker exited ({self.proc.wait()})")

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        got = self._read()
        if "error" in got:
            raise RuntimeError(f"our worker: {got['error']}")
        return got

    def close(self) -> dict:
        info = self.call(op="rss")
        self.proc.stdin.close()
        self.proc.wait()
        return info


def worker_main(spec: str) -> int:
    import torch

    import gemma_mtp
    from gemma_mtp.engine.results import Result
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions
    from gemma_mtp.speculative.synthetic import SyntheticAcceptance

    target, assistant, threads, ctx = json.loads(spec)
    torch.set_num_threads(threads)
    base = status_mb("VmHWM")
    t0 = time.perf_counter()
    engine = gemma_mtp.load(target, draft=assistant, ctx_size=ctx, threads=threads, device="cpu")
    load_s = time.perf_counter() - t0
    engine.stop_ids = frozenset()  # every run makes exactly n tokens (llama.cpp: ignore_eos)
    greedy = SamplingParams(temperature=0)
    model = engine.target
    cache = model.make_cache(batch_size=1, max_context=ctx, max_draft=8)
    kv_mb = sum(t.numel() * t.element_size() for t in _tensors(engine.decoder.cache)) / 2**20

    @torch.no_grad()
    def forward_ms(t: int) -> float:  # the same positions every call: the cache overwrites them
        start = time.perf_counter()
        hidden = model.forward(torch.full((1, t), 5), torch.arange(6, 6 + t)[None], cache).hidden
        model.logits(hidden)
        return (time.perf_counter() - start) * 1e3

    def decode_rate(spec: SpecOptions, n: int) -> tuple[float, Result]:
        """Tokens/s after the first round, from stamps as rounds commit (llama-server's
        predicted_per_second: the first token is free). Not `Timings.decode_tokens_per_s`: with a
        drafter the first round already verifies drafts, and those count there but its time not."""
        result, stamps = Result(), []
        for step in engine.stream(SHORT_PROMPT, n_predict=n, sampling=greedy, spec=spec, result=result):
            stamps.append((time.perf_counter(), len(step.token_ids)))
        tokens = sum(k for _, k in stamps[1:])
        return (tokens / (stamps[-1][0] - stamps[0][0]) if tokens else float("nan")), result

    with torch.no_grad():
        model.forward(torch.tensor([SHORT_PROMPT]), torch.arange(6)[None], cache)
    engine.generate(SHORT_PROMPT, n_predict=2, sampling=greedy)  # warm-ups: plain, then the drafter
    synth = SyntheticAcceptance(rates=(1.0, 1.0), seed=0)
    engine.generate(
        SHORT_PROMPT, n_predict=6, sampling=greedy, spec=SpecOptions(type="mtp", n_max=2, synthetic=synth)
    )
    print("@@" + json.dumps({"load_s": load_s, "base_rss_mb": base, "kv_mb": kv_mb}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "plain":
                out = {"value": decode_rate(SpecOptions(), cmd["n"])[0]}
            elif op == "prefill":
                r = engine.generate(
                    long_prompt(cmd["tokens"]), n_predict=1, sampling=greedy, spec=SpecOptions()
                )
                out = {"value": r.n_prompt / (r.timings.prompt_ms / 1e3)}
            elif op == "mtp":
                synth = SyntheticAcceptance(rates=tuple(cmd["rates"]), seed=cmd["seed"])
                spec = SpecOptions(type="mtp", n_max=cmd["n_max"], synthetic=synth)
                rate, r = decode_rate(spec, cmd["n"])
                s = r.speculative
                keep = ("rounds", "drafted", "accepted", "acceptance_rate", "mean_accepted_length",
                        "draft_ms", "verify_ms", "text_valid")  # fmt: skip
                out = {"value": rate, **{k: s[k] for k in keep}}
            elif op == "forward":
                forward_ms(cmd["t"])  # warm-up
                out = {"value": median([forward_ms(cmd["t"]) for _ in range(3)])}
            elif op == "rss":
                out = {"peak_rss_mb": status_mb("VmHWM"), "rss_mb": status_mb("VmRSS")}
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the parent, which stops with it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print("@@" + json.dumps(out), flush=True)
    return 0


def _tensors(obj: object, depth: int = 0):
    """Every tensor reachable from an object's attributes, lists and dicts (the KV cache's bytes)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)
    elif depth < 3 and hasattr(obj, "__dict__") and not isinstance(obj, type):
        for item in vars(obj).values():
            yield from _tensors(item, depth + 1)


# ---------------------------------------------------------------- llama.cpp's tools
def llama_bench(bin_dir: Path, target: Path, pp: list[int], tg: int, threads: int) -> tuple[dict, float]:
    """One `llama-bench -r 1` run: {("prefill"|"forward"|"plain", T): value}, peak RSS MB."""
    cmd = ["/usr/bin/time", "-v", str(bin_dir / "llama-bench"), "-m", str(target), "-r", "1",
           "-t", str(threads), "-o", "json", "-p", ",".join(map(str, pp or [0])), "-n", str(tg)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"llama-bench failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = json.loads(done.stdout[done.stdout.index("[") : done.stdout.rindex("]") + 1])
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    out = {}
    for r in rows:
        if r["n_gen"]:
            out[("plain", r["n_gen"])] = r["avg_ts"]
        else:
            out[("pp", r["n_prompt"])] = (r["avg_ts"], r["avg_ns"] / 1e6)
    return out, int(found.group(1)) / 1024 if found else float("nan")


def llama_server_mtp(
    bin_dir: Path,
    target: Path,
    assistant: Path,
    rates: list[float],
    n: int,
    threads: int,
    ctx: int,
    seed: int,
) -> dict:
    """A fresh llama-server with synthetic acceptance; one warm-up and one timed /completion."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(bin_dir / "llama-server"), "-m", str(target), "-md", str(assistant), "--spec-type", "draft-mtp",
           "--spec-draft-n-max", str(len(rates)), "--spec-synth-rates", ",".join(map(str, rates)),
           "-t", str(threads), "-c", str(ctx), "-np", "1", "--no-webui", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": SHORT_PROMPT, "temperature": 0, "ignore_eos": True, "cache_prompt": False, "seed": seed}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not come up ({proc.poll()}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        _post(f"{url}/completion", {**body, "n_predict": 4})  # warm-up
        t = _post(f"{url}/completion", {**body, "n_predict": n})["timings"]
        peak = _proc_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.unlink(missing_ok=True)
    return {"value": t["predicted_per_second"], "drafted": t.get("draft_n"), "accepted": t.get("draft_n_accepted"),
            "predicted_n": t.get("predicted_n"), "peak_rss_mb": peak, "text_valid": False}  # fmt: skip


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=3600) as r:
        return json.loads(r.read())


def _proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> list[dict]:
    manifest = json.loads((args.dir / "manifest.json").read_text())
    files = manifest["files"]
    target = args.dir / files["target"]["file"]
    theirs_assistant = args.dir / files["assistant"]["file"]
    ours_role = (
        "assistant" if args.dense_assistant or "assistant_centroids" not in files else "assistant_centroids"
    )
    ours_assistant = args.dir / files[ours_role]["file"]
    bin_dir = llama_bin()
    ctx = max(args.prompt_tokens, len(SHORT_PROMPT) + args.n, 16) + 64
    common = {"shape": manifest.get("shape"), "target_type": files["target"]["type"],
              "assistant_type": files["assistant"]["type"], "threads": args.threads, "n": args.n,
              "prompt_tokens": args.prompt_tokens, "commit": git_commit(), "dirty": git_dirty(),
              "cpu": cpu_name(), "timestamp": timestamp()}  # fmt: skip
    samples: dict[tuple, list[dict]] = {}

    def add(engine: str, measurement: str, n_max: int | None, unit: str, got: dict) -> None:
        samples.setdefault((engine, measurement, n_max, unit), []).append(got)

    ours = Worker(target, ours_assistant, args.threads, ctx)
    pp = ([args.prompt_tokens] if "prefill" in args.only else []) + (
        args.positions if "forward" in args.only else []
    )
    bench_rss, server_rss = [], []
    try:
        for rep in range(args.reps):
            print(f"rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
            if pp or "plain" in args.only:
                got, rss = llama_bench(
                    bin_dir, target, pp, args.n if "plain" in args.only else 0, args.threads
                )
                bench_rss.append(rss)
                if "plain" in args.only:
                    add("llama.cpp", "plain", None, "tokens/s", {"value": got[("plain", args.n)]})
                if "prefill" in args.only:
                    add(
                        "llama.cpp",
                        "prefill",
                        None,
                        "tokens/s",
                        {"value": got[("pp", args.prompt_tokens)][0]},
                    )
                for t in args.positions if "forward" in args.only else []:
                    add("llama.cpp", "forward", t, "ms", {"value": got[("pp", t)][1]})
            if "plain" in args.only:
                add("gemma-mtp", "plain", None, "tokens/s", ours.call(op="plain", n=args.n))
            if "prefill" in args.only:
                add(
                    "gemma-mtp",
                    "prefill",
                    None,
                    "tokens/s",
                    ours.call(op="prefill", tokens=args.prompt_tokens),
                )
            for t in args.positions if "forward" in args.only else []:
                add("gemma-mtp", "forward", t, "ms", ours.call(op="forward", t=t))
            for n_max in args.n_max if "mtp" in args.only else []:
                rates = args.rates[:n_max]
                got = llama_server_mtp(
                    bin_dir, target, theirs_assistant, rates, args.n, args.threads, ctx, rep
                )
                server_rss.append(got.pop("peak_rss_mb"))
                add("llama.cpp", "mtp", n_max, "tokens/s", got)
                add(
                    "gemma-mtp",
                    "mtp",
                    n_max,
                    "tokens/s",
                    ours.call(op="mtp", n=args.n, n_max=n_max, rates=rates, seed=rep),
                )
    finally:
        info = {**ours.info, **ours.close()}
    # like for like: llama-server holds target + assistant as our worker does; llama-bench the target only
    add("gemma-mtp", "peak_rss", None, "MB", {"value": info["peak_rss_mb"]})
    if server_rss or bench_rss:
        theirs = max(server_rss) if server_rss else max(bench_rss)
        add(
            "llama.cpp",
            "peak_rss",
            None,
            "MB",
            {"value": theirs, "tool": "llama-server" if server_rss else "llama-bench"},
        )
    if server_rss and bench_rss:
        add("llama.cpp", "peak_rss_target_only", None, "MB", {"value": max(bench_rss), "tool": "llama-bench"})
    files_mb = (target.stat().st_size + ours_assistant.stat().st_size) / 2**20
    return rows_from(samples, common | {"ours_assistant_file": ours_assistant.name,
                                        "files_mb": files_mb, "ours_kv_mb": info["kv_mb"],
                                        "ours_load_s": info["load_s"]})  # fmt: skip


def rows_from(samples: dict[tuple, list[dict]], common: dict) -> list[dict]:
    rows, medians = [], {}
    for (engine, measurement, n_max, unit), got in samples.items():
        m = median([g["value"] for g in got])
        medians[(engine, measurement, n_max)] = (m, unit)
        for rep, g in enumerate(got):
            extra = {k: v for k, v in g.items() if k != "value"}
            rows.append({**common, "engine": engine, "measurement": measurement, "n_max": n_max, "rep": rep,
                         "value": g["value"], "unit": unit, "reps": len(got), "median": m, **extra})  # fmt: skip
    for (engine, measurement, n_max), (m, unit) in medians.items():
        if engine != "gemma-mtp" or (peer := medians.get(("llama.cpp", measurement, n_max))) is None:
            continue
        ratio = m / peer[0] if BETTER_HIGH[unit] else peer[0] / m
        rows.append({**common, "engine": "ours/llama.cpp", "measurement": measurement, "n_max": n_max,
                     "value": ratio, "unit": "x (>1: ours better)", "reps": None, "median": ratio})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    cells: dict[tuple, dict] = {}
    for r in rows:
        if r.get("rep", 0) != 0 and r["engine"] != "ours/llama.cpp":
            continue
        key = (r["measurement"], r["n_max"])
        cell = cells.setdefault(
            key, {"measurement": r["measurement"], "n_max/T": r["n_max"], "unit": r["unit"]}
        )
        name = {"gemma-mtp": "ours", "ours/llama.cpp": "ours/llama.cpp"}.get(r["engine"], r["engine"])
        cell[name] = r["median"]
        if r["engine"] not in ("gemma-mtp", "ours/llama.cpp"):
            cell["unit"] = r["unit"]
    ours, first = {k: c.get("ours") for k, c in cells.items()}, rows[0]
    plain, one = ours.get(("plain", None)), ours.get(("forward", 1))
    for (measurement, _), c in cells.items():
        if measurement == "mtp" and plain and c.get("ours"):
            c["ours vs own"] = c["ours"] / plain  # speculative / plain
        if measurement == "forward" and one and c.get("ours"):
            c["ours vs own"] = c["ours"] / one  # T positions / one position
        if measurement == "peak_rss" and c.get("ours"):  # the budget: the files + KV + 300 MB
            c["ours vs own"] = c["ours"] / (first["files_mb"] + first["ours_kv_mb"] + 300)
    columns = ["measurement", "n_max/T", "unit", "ours", "llama.cpp", "ours/llama.cpp", "ours vs own"]
    return format_table(list(cells.values()), columns)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = {(r["engine"], r["measurement"], r["n_max"]): r["median"] for r in rows}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [("plain", None), ("prefill", None)] + sorted({(m, n) for (_, m, n) in med if m == "mtp"})
    labels = [k for k in labels if any((e, *k) in med for e in ("gemma-mtp", "llama.cpp"))]
    for i, engine in enumerate(("gemma-mtp", "llama.cpp")):
        xs = [j + (i - 0.5) * 0.4 for j in range(len(labels))]
        left.bar(xs, [med.get((engine, *k), 0.0) for k in labels], width=0.4, label=engine)
    left.set_xticks(range(len(labels)), [m if n is None else f"{m} n={n}" for m, n in labels], rotation=30)
    left.set_ylabel("tokens/s")
    left.legend()
    for engine in ("gemma-mtp", "llama.cpp"):
        ts = sorted(n for (e, m, n) in med if e == engine and m == "forward")
        if ts:
            right.plot(ts, [med[(engine, "forward", t)] for t in ts], marker="o", label=engine)
    right.set_xlabel("positions in one forward")
    right.set_ylabel("ms")
    if right.lines:
        right.legend()
    first = rows[0]
    fig.suptitle(f"{first['shape']} {first['target_type']} + {first['assistant_type']} assistant, "
                 f"{first['threads']} threads, commit {first['commit']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/shapes/e2b"), help="make_shaped_gguf.py's --out")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(MEASUREMENTS), help="comma list of " + ",".join(MEASUREMENTS))
    ap.add_argument("-n", type=int, default=128, help="tokens generated (plain, mtp)")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="prefill prompt length")
    ap.add_argument("--n-max", default="1,2,3,4")
    ap.add_argument("--rates", default="0.89,0.83,0.74,0.64", help="synthetic acceptance, one per position")
    ap.add_argument("--positions", default="1,2,4,8", help="forward sizes")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument(
        "--dense-assistant", action="store_true", help="ours uses llama.cpp's dense assistant too"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "shapes_vs_llama_cpp")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    args.only = [m for m in args.only.split(",") if m]
    if unknown := set(args.only) - set(MEASUREMENTS):
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MEASUREMENTS)}")
    args.n_max = [int(x) for x in args.n_max.split(",")]
    args.rates = [float(x) for x in args.rates.split(",")]
    args.positions = [int(x) for x in args.positions.split(",")]
    if max(args.n_max) > len(args.rates):
        ap.error(f"--rates has {len(args.rates)} values; --n-max {max(args.n_max)} needs one per position")
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "rows.jsonl").open("a") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    first = rows[0]
    head = (f"{first['shape']} {first['target_type']} target + {first['assistant_type']} assistant "
            f"(ours: {first['ours_assistant_file']}), {args.threads} threads, reps {args.reps}, n {args.n}, "
            f"prompt {args.prompt_tokens}, commit {first['commit']}{' (dirty)' if first['dirty'] else ''}, "
            f"{first['cpu']}; files {first['files_mb']:.0f} MB, our KV {first['ours_kv_mb']:.0f} MB")  # fmt: skip
    text = head + "\n\n```\n" + table(rows) + "\n```\n"
    (args.out / "table.md").write_text(text)
    print(text)
    plot(rows, args.out / "plot.png")
    print(f"rows: {args.out / 'rows.jsonl'}, table: {args.out / 'table.md'}, plot: {args.out / 'plot.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
