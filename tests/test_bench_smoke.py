"""`gemma-mtp bench` end to end on a tiny target and its MTP assistant: valid JSONL rows, PNG plots,
report.md and the terminal table. Token-id prompts, so no tokenizer is needed. Timings are not
checked (tests never assert them); the structure and the greedy lossless flag are."""

from __future__ import annotations

import argparse
import json

import pytest

from gemma_mtp.bench.cli import add_bench_arguments, bench_command

pytest.importorskip("matplotlib")  # the [bench] extra
pytest.importorskip("rich")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_out(reference_models, tmp_path_factory):
    target = reference_models.target("e2b")
    assistant = reference_models.assistant("e2b", ordered=True)
    root = tmp_path_factory.mktemp("bench")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        '{"category": "loop", "prompt": [2, 5, 9, 13, 5, 9, 13, 5, 9]}\n'
        '{"category": "random", "prompt": [2, 40, 77, 3, 120, 9]}\n'
    )
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "-m", str(target.path), "-md", str(assistant.path), "--n-max", "1,2", "--reps", "2"]
        + ["--prompts", str(prompts), "-n", "8", "--temp", "0", "--spec-autotune", "--device", "cpu"]
        + ["--out", str(root / "out"), "--p-min", "0,0.5", "--recommend", str(root / "out" / "profile.json")]
    )
    (root / "out").mkdir()
    assert bench_command(args) == 0
    return root / "out", assistant.path.name


def test_rows_are_valid_jsonl_with_provenance(bench_out):
    out, drafter = bench_out
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    overall = [(r["drafter"], r["n_max"], r["p_min"], r["strategy"]) for r in rows if r["category"] == "all"]
    # every n_max crossed with every p_min; no --spec-type: the assistant's own strategy, mtp
    speculative = [(drafter, n, p, "mtp") for n in (1, 2) for p in (0.0, 0.5)]
    assert overall == [("none", 0, None, "none"), *speculative, (drafter, "auto", 0.0, "mtp")]
    assert {r["category"] for r in rows} == {"all", "loop", "random"}
    for row in rows:
        for key in ("device", "dtype", "model_weights", "flags", "git_commit", "timestamp", "reps"):
            assert key in row, key
        assert row["reps"] == 2 and row["tokens_per_s"] > 0
    speculative = [r for r in rows if r["n_max"] != 0 and r["category"] == "all"]
    assert all(r["lossless"] for r in speculative)
    # a confidence threshold may stop the tiny random drafter from drafting at all; without one it drafts
    assert all(len(r["acceptance_by_position"]) >= 1 for r in speculative if r["p_min"] == 0)
    assert sum(next(r for r in speculative if r["n_max"] == "auto")["autotune_chosen"]) > 0


def test_plots_and_report_are_written(bench_out):
    bench_out, _ = bench_out
    for name in ("acceptance_by_position.png", "tokens_per_s.png"):
        assert (bench_out / name).read_bytes()[:8] == PNG_MAGIC
    report = (bench_out / "report.md").read_text()
    assert "![acceptance_by_position](acceptance_by_position.png)" in report
    assert "![tokens_per_s](tokens_per_s.png)" in report
    assert "| drafter | n_max |" in report


def test_terminal_table(bench_out, capsys):
    # the fixture's run printed before this test captured; render the table again from the rows
    from rich.console import Console

    from gemma_mtp.bench.report import rich_table

    bench_out, _ = bench_out
    rows = [json.loads(line) for line in (bench_out / "rows.jsonl").read_text().splitlines()]
    Console(width=140).print(rich_table(rows))
    out = capsys.readouterr().out
    assert "plain" in out and "acceptance" in out and "±" in out


def test_endpoint_mode_against_our_server(reference_models, tmp_path):
    """`bench --endpoint` on our own OpenAI-compatible server: acceptance from its timings/metrics."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    import socket
    import threading
    import time
    import urllib.request

    import server_model

    from gemma_mtp.bench.endpoint import EndpointConfig, run_endpoint_bench
    from gemma_mtp.cli.spec_args import SpecFlags
    from gemma_mtp.engine.options import LoadOptions
    from gemma_mtp.server.app import create_app
    from gemma_mtp.server.settings import ServerSettings

    target = server_model.servable_copy(reference_models.target("e2b").path, tmp_path / "target")
    app = create_app(
        ServerSettings(
            load=LoadOptions(
                model=str(target),
                model_draft=str(reference_models.assistant("e2b", ordered=True).path),
                ctx_size=128,
                dtype="float32",
                device="cpu",
            ),
            spec=SpecFlags(type="mtp", n_max=3),
        )
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"category": "ids", "prompt": [2, 5, 9, 13, 5, 9, 13]}\n')
        config = EndpointConfig(
            endpoints=(url,), n_max=(2,), reps=2, prompts=str(prompts), n_predict=8, temperature=0
        )
        rows = run_endpoint_bench(config)
    finally:
        server.should_exit = True
        thread.join(30)
    overall = next(r for r in rows if r["category"] == "all")
    assert overall["timing_source"] == "server" and overall["tokens_per_s"] > 0
    assert overall["drafted"] > 0 and overall["acceptance"] is not None
    assert len(overall["acceptance_by_position"]) == 2  # per-position counters from /metrics, n_max 2


def test_recommend_writes_the_fastest_row_as_a_profile(bench_out):
    from gemma_mtp.cli.profile import read_profile

    out, _ = bench_out
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    fixed = [r for r in rows if r["category"] == "all" and r["n_max"] != "auto"]
    best = max(fixed, key=lambda r: r["tokens_per_s"])
    profile = read_profile(out / "profile.json")
    assert profile.tokens_per_s == best["tokens_per_s"]
    assert (profile.n_max, profile.p_min) == (
        (best["n_max"], best["p_min"]) if best["n_max"] else (None, None)
    )
    assert len(profile.evidence) == len(fixed)


def test_targets_and_temperatures_are_axes_with_their_own_plain_baselines(reference_models, tmp_path):
    """-m A B and --temp 0,0.5: every (target, temperature) has its plain row and its drafter rows."""
    import shutil

    target = reference_models.target("e2b").path
    other = tmp_path / "other"
    shutil.copytree(target, other)
    assistant = reference_models.assistant("e2b", ordered=True).path
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"category": "loop", "prompt": [2, 5, 9, 13, 5, 9, 13]}\n')
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "-m", str(target), str(other), "-md", str(assistant), "--n-max", "1", "--reps", "1"]
        + ["--prompts", str(prompts), "-n", "4", "--temp", "0,0.5", "--device", "cpu"]
        + ["--out", str(tmp_path / "out")]
    )
    (tmp_path / "out").mkdir()
    assert bench_command(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    overall = {(r["target"], r["temperature"], r["strategy"]) for r in rows if r["category"] == "all"}
    assert overall == {
        (t, temp, s) for t in (target.name, "other") for temp in (0.0, 0.5) for s in ("none", "mtp")
    }
    greedy = [r for r in rows if r["temperature"] == 0.0 and r["strategy"] == "mtp"]
    assert greedy and all(r["lossless"] for r in greedy)
