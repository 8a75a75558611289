"""Benchmark harness: the arithmetic on a recorded trace, prompt files, report cells, and the
endpoint client against a stub OpenAI-compatible server on the loopback interface."""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gemma_mtp.bench import BUILTIN, CATEGORIES, Generation, load_prompts, mean_std, summarize, totals
from gemma_mtp.bench.cli import add_bench_arguments
from gemma_mtp.bench.endpoint import EndpointConfig, parse_metrics, run_endpoint_bench, spec_counters
from gemma_mtp.bench.report import markdown_table, table_cells
from gemma_mtp.errors import UsageError


def result(n_generated, decode_ms, drafted=0, accepted=0, rounds=0, acc_pos=(), dr_pos=()):
    """The `Result.to_dict()` shape the engine returns (only the fields the harness reads)."""
    spec = {
        "drafted": drafted,
        "accepted": accepted,
        "rounds": rounds,
        "accepted_by_position": list(acc_pos),
        "drafted_by_position": list(dr_pos),
    }
    return {"n_generated": n_generated, "timings": {"decode_ms": decode_ms}, "speculative": spec}


# Two reps of two prompts each, as recorded from engine results.
TRACE = [
    (0, "code", result(11, 500.0, 12, 8, 5, (4, 3, 1), (5, 4, 3))),
    (0, "prose", result(6, 500.0, 4, 1, 4, (1,), (4,))),
    (1, "code", result(21, 800.0, 10, 9, 4, (4, 3, 2), (4, 3, 3))),
    (1, "prose", result(5, 200.0)),
]
GENERATIONS = [Generation.from_result(r, category=c, rep=rep) for rep, c, r in TRACE]


def test_totals_of_one_rep_are_ratios_of_sums():
    t = totals(g for g in GENERATIONS if g.rep == 0)
    assert t.n_decoded == 10 + 5  # the first token of each generation comes out of the prefill
    assert t.tokens_per_s == pytest.approx(15 / 1.0)
    assert t.acceptance == pytest.approx(9 / 16)
    assert t.acceptance_by_position == pytest.approx([5 / 9, 3 / 4, 1 / 3])
    assert t.mean_accepted_length == pytest.approx(1 + 9 / 9)


def test_summary_is_mean_and_sample_sigma_over_reps():
    s = summarize(GENERATIONS, {0: 10.0, 1: 12.0})
    assert s["reps"] == 2
    assert s["tokens_per_s"] == pytest.approx((15 + 24) / 2)
    assert s["tokens_per_s_std"] == pytest.approx(statistics.stdev([15, 24]))
    assert s["speedup"] == pytest.approx((1.5 + 2.0) / 2)  # paired per rep, then averaged
    assert s["speedup_std"] == pytest.approx(statistics.stdev([1.5, 2.0]))
    assert s["acceptance"] == pytest.approx((9 / 16 + 9 / 10) / 2)
    assert s["mean_accepted_length"] == pytest.approx((2.0 + 3.25) / 2)
    assert s["acceptance_by_position"] == pytest.approx(
        [(5 / 9 + 1) / 2, (3 / 4 + 1) / 2, (1 / 3 + 2 / 3) / 2]
    )
    assert s["acceptance_by_position_std"][2] == pytest.approx(statistics.stdev([1 / 3, 2 / 3]))
    assert (s["drafted"], s["accepted"], s["n_decoded"]) == (26, 18, 39)


def test_summary_by_category_and_single_rep_sigma_is_zero():
    prose = summarize([g for g in GENERATIONS if g.category == "prose" and g.rep == 0])
    assert prose["tokens_per_s"] == pytest.approx(5 / 0.5)
    assert prose["tokens_per_s_std"] == 0.0
    assert prose["acceptance_by_position"] == pytest.approx([1 / 4])
    assert "speedup" not in prose


def test_mean_std_skips_missing_values():
    assert mean_std([None, 2.0, 4.0]) == (3.0, pytest.approx(2**0.5))
    assert mean_std([None]) == (None, None)


def test_builtin_prompts_cover_every_category():
    assert {p.category for p in BUILTIN} == set(CATEGORIES)
    assert all(p.is_text and p.prompt for p in BUILTIN)


def test_prompt_file_takes_text_and_token_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"category": "code", "prompt": "def f():"}\n\n{"prompt": [2, 5, 7]}\n')
    prompts = load_prompts(str(path))
    assert [(p.category, p.prompt) for p in prompts] == [("code", "def f():"), ("uncategorized", (2, 5, 7))]


@pytest.mark.parametrize(
    "line, message",
    [("not json", "not JSON"), ('{"category": "x"}', "expected an object"), ('{"prompt": []}', "token-id")],
)
def test_bad_prompt_lines_are_named(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=rf"p.jsonl:1: .*{message}"):
        load_prompts(str(path))


def test_table_cells_show_mean_sigma_positions_and_autotune_choice():
    row = {"drafter": "d.gguf", "n_max": "auto", "category": "all", "autotune_chosen": [1, 3, 0]}
    row |= summarize(GENERATIONS, {0: 10.0, 1: 12.0})
    cells = table_cells(row)
    assert cells[:4] == ["d.gguf", "auto (mostly 1: 75%)", "19.5 ± 6.4", "1.75 ± 0.35"]
    assert cells[5] == "0.78 / 0.88 / 0.50"
    assert markdown_table([row]).count("\n") == 2


def test_n_max_list_flag():
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    assert parser.parse_args(["bench", "--n-max", "1,2,4"]).n_max == (1, 2, 4)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--n-max", "1,x"])


# --------------------------------------------------------------------------- endpoint mode

METRICS = """# HELP vllm:spec_decode_num_draft_tokens_total drafted
vllm:spec_decode_num_draft_tokens_total{{model_name="m"}} {drafted}
vllm:spec_decode_num_accepted_tokens_total{{model_name="m"}} {accepted}
vllm:spec_decode_num_drafts_total{{model_name="m"}} {rounds}
vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",position="0"}} {pos0}
vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",position="1"}} {pos1}
"""


class _Stub(BaseHTTPRequestHandler):
    """Each completion: 3 streamed tokens, llama-server timings, and counters that grow by
    4 rounds x 2 drafts with 5 accepted (4 at position 0, 1 at position 1)."""

    served = 0
    bodies: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        n = type(self).served
        text = METRICS.format(drafted=8 * n, accepted=5 * n, rounds=4 * n, pos0=4 * n, pos1=n)
        self._send(200, "text/plain", text.encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        type(self).served += 1
        chunks = [{"choices": [{"text": t}]} for t in ("a", "b", "c")]
        timings = {"predicted_n": 3, "predicted_ms": 100.0, "predicted_per_second": 30.0}
        timings |= {"draft_n": 8, "draft_n_accepted": 5}
        chunks.append({"choices": [], "usage": {"completion_tokens": 3}, "timings": timings})
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", payload.encode())

    def _send(self, code: int, kind: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_metrics_parser_finds_speculative_counters_under_any_prefix():
    metrics = parse_metrics(METRICS.format(drafted=8, accepted=5, rounds=4, pos0=4, pos1=1))
    counters = spec_counters(metrics)
    assert counters == {
        "drafted": 8,
        "accepted": 5,
        "rounds": 4,
        "by_position": {0: 4, 1: 1},
        "drafted_by_position": {},
    }


def test_endpoint_mode_reads_timings_and_metrics(stub_server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"category": "code", "prompt": "def f():"}\n{"category": "json", "prompt": [2, 3]}\n')
    config = EndpointConfig(endpoints=(stub_server,), n_max=(2,), reps=2, prompts=str(prompts), n_predict=3)
    rows = run_endpoint_bench(config)
    overall = next(r for r in rows if r["category"] == "all")
    assert overall["tokens_per_s"] == pytest.approx(3 / 0.1)  # the server's predicted_n / predicted_ms
    assert overall["speedup"] == pytest.approx(1.0)  # the first endpoint is the baseline
    assert overall["acceptance"] == pytest.approx(5 / 8)
    assert overall["mean_accepted_length"] == pytest.approx(1 + 5 / 4)
    assert overall["acceptance_by_position"] == pytest.approx([4 / 4, 1 / 4])
    assert {r["category"] for r in rows} == {"all", "code", "json"}
    body = _Stub.bodies[-1]
    assert body["speculative.n_max"] == 2 and body["speculative"] == {"n_max": 2} and body["prompt"] == [2, 3]


def test_endpoint_rows_make_a_report_without_a_plain_row(stub_server, tmp_path):
    pytest.importorskip("matplotlib")
    from gemma_mtp.bench.report import write_report

    config = EndpointConfig(endpoints=(stub_server,), n_max=(1, 2), reps=1, prompts="builtin", n_predict=3)
    written = write_report(run_endpoint_bench(config), tmp_path)
    assert sorted(p.name for p in written) == [
        "acceptance_by_position.json",
        "acceptance_by_position.png",
        "report.md",
        "rows.jsonl",
        "tokens_per_s.json",
        "tokens_per_s.png",
    ]


def test_the_seeds_preset_renders_chat_prompts_with_thinking_off(monkeypatch):
    """--preset seeds: 5 chat prompts x 200 tokens, temperature 0.3, 3 reps, through the model's
    template with enable_thinking off (the Gemma 4 vocabulary and template from llama.cpp's sdist)."""
    import argparse

    from gemma_mtp.assets import llama_cpp_vocab
    from gemma_mtp.bench import cli as bench_cli
    from gemma_mtp.bench.prompts import SEEDS
    from gemma_mtp.bench.runner import BenchConfig, _encode
    from gemma_mtp.chat import ChatTemplate
    from gemma_mtp.engine.options import LoadOptions
    from gemma_mtp.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser()
    bench_cli.add_bench_arguments(parser.add_subparsers())
    args = parser.parse_args(["bench", "-m", "t.gguf", "--preset", "seeds"])
    bench_cli._workload(args)
    assert (args.prompts, args.n_predict, args.temperature, args.reps) == ("seeds", 200, (0.3,), 3)
    assert (args.chat, args.reasoning) == (True, "off")
    explicit = parser.parse_args(["bench", "-m", "t.gguf", "--preset", "seeds", "-n", "50", "--reps", "1"])
    bench_cli._workload(explicit)
    assert (explicit.n_predict, explicit.reps, explicit.temperature) == (50, 1, (0.3,))  # given flags win

    vocab = str(llama_cpp_vocab("gemma-4"))
    config = BenchConfig(load=LoadOptions(model=vocab), prompts="seeds", chat=True, reasoning="off")
    ids = _encode(SEEDS, config)
    tokenizer = load_tokenizer(vocab)
    template = ChatTemplate.for_tokenizer(tokenizer)
    off = template.render([{"role": "user", "content": SEEDS[0].prompt}], enable_thinking=False)
    on = template.render([{"role": "user", "content": SEEDS[0].prompt}], enable_thinking=True)
    assert off != on and ids[0] == tokenizer.encode(off)
    assert len(ids) == 5 and {p.category for p in SEEDS} == {"code", "reasoning"}


def test_chat_template_file_renders_the_prompts_instead_of_the_models_template(tmp_path):
    """--chat-template-file: a target without a template (or one the user replaces) still benches
    chat prompts, through the file given."""
    import argparse

    from gemma_mtp.assets import llama_cpp_vocab
    from gemma_mtp.bench import cli as bench_cli
    from gemma_mtp.bench.prompts import SEEDS
    from gemma_mtp.bench.runner import BenchConfig, _encode
    from gemma_mtp.engine.options import LoadOptions
    from gemma_mtp.tokenizer import load_tokenizer

    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}")
    parser = argparse.ArgumentParser()
    bench_cli.add_bench_arguments(parser.add_subparsers())
    args = parser.parse_args(["bench", "-m", "t.gguf", "--chat", "--chat-template-file", str(template)])
    assert args.chat_template_file == str(template)
    vocab = str(llama_cpp_vocab("gemma-4"))
    config = BenchConfig(
        load=LoadOptions(model=vocab), prompts="seeds", chat=True, chat_template_file=str(template)
    )
    ids = _encode(SEEDS, config)
    assert ids[0] == load_tokenizer(vocab).encode(f"<<{SEEDS[0].prompt}>>")


def test_tokens_per_forward_and_time_to_first_token_on_a_hand_made_case():
    """Every target forward commits one token plus the drafts it accepted: forwards = tokens - accepted."""
    from gemma_mtp.bench.stats import Generation, summarize

    gens = [
        Generation(
            category="c", rep=0, n_decoded=9, decode_ms=100.0, drafted=6, accepted=4, rounds=3, ttft_ms=10.0
        ),
        Generation(category="c", rep=0, n_decoded=4, decode_ms=50.0, ttft_ms=30.0),
        Generation(
            category="c", rep=1, n_decoded=9, decode_ms=100.0, drafted=6, accepted=2, rounds=3, ttft_ms=20.0
        ),
    ]
    out = summarize(gens)
    # rep 0: 15 tokens over 11 forwards; rep 1: 10 tokens over 8 forwards
    assert out["tokens_per_forward"] == pytest.approx((15 / 11 + 10 / 8) / 2)
    assert out["tokens_per_forward_std"] == pytest.approx(abs(15 / 11 - 10 / 8) / 2**0.5)
    assert out["ttft_ms"] == pytest.approx((20.0 + 20.0) / 2)  # per rep the median: 20 and 20
