"""Launch the vendored llama-server with what `gemma-mtp bench --emit llama-server` prints, for each
kind of profile, and say whether it took the flags (not CI: CI has no llama.cpp build).

Pairs: llama.cpp's own tiny E2B-like target and dense assistant (tests/fixtures/llama_cpp, made by its
converter: draft-mtp loads), the embedded Gemma 3 270M with our MTP drafter (its layout and a
Gemma 3 target are not what llama.cpp's draft-mtp knows: refused, with its log), the 270M as its
own draft-simple draft, and ngram-simple on the 270M. Each server gets one greedy completion of 8
tokens and reports its timings.draft_n / draft_n_accepted.

    .venv/bin/python benchmarks/check_emit_llama_server.py
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from _common import REPO
from bench_endpoint_llama_server import Refused, free_port, llama_cpp_bin, server

from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.cli.profile import Profile, write_profile
from gemma_mtp.demo import demo_drafter

FIXTURES = REPO / "tests" / "fixtures" / "llama_cpp"


def cases() -> list[tuple[str, Profile, list[int] | str]]:
    small = gemma3_270m_gguf()
    common = {"tokens_per_s": 1.0, "speedup": None, "p_min": 0.0}
    return [
        (
            "llama.cpp's E2B-like pair, draft-mtp",
            Profile(
                target=str(FIXTURES / "e2b.f32.gguf"),
                drafter=str(FIXTURES / "e2b_assistant_dense.f32.gguf"),
                strategy="mtp",
                n_max=3,
                **common,
            ),
            [2, 10, 11, 12, 13],
        ),
        (
            "270M + our MTP drafter, draft-mtp",
            Profile(
                target=str(small),
                drafter=str(demo_drafter()),
                strategy="mtp",
                n_max=3,
                **{**common, "p_min": 0.6},
            ),
            "def fibonacci(n):",
        ),
        (
            "270M as its own draft, draft-simple",
            Profile(target=str(small), drafter=str(small), strategy="draft", n_max=3, **common),
            "def fibonacci(n):",
        ),
        (
            "270M, ngram-simple",
            Profile(target=str(small), drafter=None, strategy="ngram", n_max=3, **common),
            "a b c a b c a b c a b",
        ),
    ]


def emitted(profile_path: Path) -> list[str]:
    cmd = [str(Path(sys.executable).with_name("gemma-mtp")), "bench", "--emit", "llama-server"]
    done = subprocess.run([*cmd, "--profile", str(profile_path)], capture_output=True, text=True, check=True)
    for line in done.stderr.splitlines():
        print(f"  {line}")
    return shlex.split(done.stdout.strip())


def main() -> int:
    llama = llama_cpp_bin() / "llama-server"
    if not llama.is_file():
        sys.exit(f"{llama} is missing: build it with scripts/build_llama_cpp.sh")
    results = []
    with tempfile.TemporaryDirectory(prefix="emit-") as tmp:
        for i, (name, profile, prompt) in enumerate(cases()):
            print(f"[{name}]")
            path = write_profile(Path(tmp) / f"p{i}.json", profile)
            argv = emitted(path)
            print(f"  emitted: {shlex.join(argv)}")
            assert argv[0] == "llama-server", argv
            port = free_port()
            argv = [str(llama), *argv[1:], "--host", "127.0.0.1", "--port", str(port)]
            argv += ["-c", "256", "-t", "2", "-np", "1", "--no-webui"]
            try:
                with server(argv, port, Path(tmp) / f"p{i}.log", timeout_s=180) as url:
                    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
                    request = urllib.request.Request(
                        f"{url}/v1/completions",
                        json.dumps(body).encode(),
                        {"Content-Type": "application/json"},
                    )
                    with urllib.request.urlopen(request, timeout=300) as r:
                        timings = json.loads(r.read()).get("timings", {})
                verdict = (
                    f"accepted: draft_n {timings.get('draft_n')}, accepted {timings.get('draft_n_accepted')}"
                )
            except Refused as exc:
                verdict = f"REFUSED by llama-server: {exc}"
            print(f"  {verdict}")
            results.append((name, verdict))
    print()
    for name, verdict in results:
        print(f"{name}: {verdict[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
