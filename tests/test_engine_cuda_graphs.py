"""`--cuda-graphs` end to end on the CPU, its static path run eagerly (`GEMMA_MTP_GRAPHS_EAGER=1`):
`gemma_mtp.load(..., cuda_graphs=True)` builds `GraphBatchDecoder`, says so in the load report, its
rounds take the static step (forward + head) and only prompt prefills the plain forward, and every
output is the plain engine's, token for token: plain and MTP greedy, sampled with a seed, a batch
of rows of different lengths (greedy and sampled rows together), and with the pruned output head.
The `--cuda-graphs` flag of `run` reaches the engine. And the plain decoder's head, through
batch.py's `_verify_rows` seam: each row's head is computed once per round.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from native_required import native_or_skip

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.engine.graph_decoder import GraphBatchDecoder
from gemma_mtp.engine.options import GRAPHS_EAGER_ENV
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
TARGET, TARGET_Q8 = FIXTURES / "e2b.f32.gguf", FIXTURES / "e2b.q8_0.gguf"
DRAFTER = FIXTURES / "e2b_assistant_centroids.f32.gguf"
PROMPTS = [[2, *range(40, 53)], [2, 9, 9, 4], [2, 7, 100, 31, 7, 100]]  # 14 tokens: past the window (8)
GREEDY = SamplingParams(temperature=0)
SAMPLED = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, min_p=0.0, seed=7)
N = 20


def _load(target: Path, *, graphs: bool, **fields) -> gemma_mtp.Engine:
    native_or_skip()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(GRAPHS_EAGER_ENV, "1")
        return gemma_mtp.load(
            str(target),
            str(DRAFTER),
            device="cpu",
            dtype="float32",
            ctx_size=64,
            cuda_graphs=graphs,
            **fields,
        )


@pytest.fixture(scope="module")
def engines() -> dict[bool, gemma_mtp.Engine]:
    """{cuda_graphs: engine} over the same tiny E2B-shaped target and assistant, three rows."""
    return {graphs: _load(TARGET, graphs=graphs, max_batch=3) for graphs in (False, True)}


def _count(engine: gemma_mtp.Engine) -> Counter:
    """Counts, from now on, of the engine's rounds, static-step runs and plain forwards."""
    decoder, calls = engine.decoder, Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    decoder.step = counted("rounds", decoder.step)
    decoder._forward_rows = counted("plain", decoder._forward_rows)
    if isinstance(decoder, GraphBatchDecoder):
        decoder.static.run = counted("static", decoder.static.run)
    return calls


def _undo(engine: gemma_mtp.Engine) -> None:
    for name in ("step", "_forward_rows"):
        engine.decoder.__dict__.pop(name, None)
    if isinstance(engine.decoder, GraphBatchDecoder):
        engine.decoder.static.__dict__.pop("run", None)


def _generate(engine, sampling: SamplingParams, spec: SpecOptions) -> list[list[int]]:
    return [engine.generate(p, n_predict=N, sampling=sampling, spec=spec).token_ids for p in PROMPTS]


def _both(engines, sampling: SamplingParams, spec: SpecOptions) -> tuple[list, list, Counter]:
    """(plain engine's outputs, graph engine's outputs, the graph engine's counts)."""
    want = _generate(engines[False], sampling, spec)
    calls = _count(engines[True])
    try:
        got = _generate(engines[True], sampling, spec)
    finally:
        _undo(engines[True])
    return want, got, calls


def _rounds_took_the_static_step(calls: Counter) -> None:
    assert calls["static"] == calls["rounds"] > 0
    assert calls["plain"] == len(PROMPTS)  # the prompt prefills only


def test_load_builds_the_graph_decoder_and_says_so(engines):
    assert type(engines[False].decoder) is BatchDecoder
    decoder = engines[True].decoder
    assert isinstance(decoder, GraphBatchDecoder) and decoder.graphs is False  # eager: no CUDA here
    assert engines[True].load_options.cuda_graphs is True
    notices = engines[True].load_report.notices
    assert (
        decoder.notice in notices
        and "prompt prefills (and their media) take the plain forward" in decoder.notice
    )
    assert not any("--cuda-graphs" in n for n in engines[False].load_report.notices)


def test_plain_greedy_is_the_plain_engines(engines):
    want, got, calls = _both(engines, GREEDY, SpecOptions(type="none"))
    assert got == want and all(len(ids) == N for ids in got)
    _rounds_took_the_static_step(calls)


@pytest.mark.parametrize("n_max", [1, 2, 4])
def test_mtp_greedy_is_the_plain_engines_and_plain_greedy(engines, n_max):
    want, got, calls = _both(engines, GREEDY, SpecOptions(type="mtp", n_max=n_max))
    assert got == want == _generate(engines[False], GREEDY, SpecOptions(type="none"))
    _rounds_took_the_static_step(calls)
    assert calls["rounds"] < len(PROMPTS) * N  # drafts were accepted: rounds of several positions


@pytest.mark.parametrize(
    "spec", [SpecOptions(type="none"), SpecOptions(type="mtp", n_max=3)], ids=["none", "mtp3"]
)
def test_sampled_with_a_seed_is_the_plain_engines(engines, spec):
    want, got, calls = _both(engines, SAMPLED, spec)
    assert got == want
    assert got != _generate(engines[False], GREEDY, spec)  # it did sample
    _rounds_took_the_static_step(calls)


def _batch(engine) -> list[list[int]]:
    """Three rows of different prompt lengths, samplers, strategies and budgets, decoded together."""
    decoder = engine.decoder
    rows = [
        (PROMPTS[0], GREEDY, SpecOptions(type="mtp", n_max=3), 24),
        (PROMPTS[1], SAMPLED, SpecOptions(type="mtp", n_max=2), 16),
        (PROMPTS[2], GREEDY, SpecOptions(type="ngram", n_max=4), 20),
    ]
    slots = [
        decoder.add(p, n_predict=n, sampling=sampling, spec=spec, stop_ids=frozenset())
        for p, sampling, spec, n in rows
    ]
    while decoder.active():
        decoder.step()
    for slot in slots:
        decoder.release(slot)
    return [slot.generated for slot in slots]


def test_a_batch_of_rows_of_different_lengths_is_the_plain_engines(engines):
    want = _batch(engines[False])
    calls = _count(engines[True])
    try:
        got = _batch(engines[True])
    finally:
        _undo(engines[True])
    assert got == want and [len(ids) for ids in got] == [24, 16, 20]
    assert calls["static"] == calls["rounds"] > 0 and calls["plain"] == 3
    widths = {key[:2] for key in engines[True].decoder.static.shapes}
    assert any(rows == 3 and width > 1 for rows, width in widths), widths  # all three rows, verifying


def test_with_the_pruned_head_the_outputs_are_the_plain_engines():
    """The plain engine's greedy rows take the pruned head's argmax; the graph engine's the logits
    its step computed with the forward: the same tokens."""
    engines = {g: _load(TARGET_Q8, graphs=g, quantized=True, head="pruned") for g in (False, True)}
    head = engines[False].target.output_head
    assert head is not None, engines[False].load_report.notices
    limit = head.max_rows
    try:
        head.max_rows = 5  # answer verify rounds too, not only single positions
        for spec in (
            SpecOptions(type="none"),
            SpecOptions(type="mtp", n_max=2),
            SpecOptions(type="mtp", n_max=4),
        ):
            before = head.stats.positions
            want = _generate(engines[False], GREEDY, spec)
            assert head.stats.positions - before >= sum(map(len, want)), spec  # the pruned head answered
            calls = _count(engines[True])
            got = _generate(engines[True], GREEDY, spec)
            _undo(engines[True])
            assert got == want, spec
            _rounds_took_the_static_step(calls)
    finally:
        head.max_rows = limit


def test_the_plain_decoders_head_runs_once_per_row_in_a_mixed_batch(engines):
    """A greedy row takes its argmax ids, a sampled row its logits: neither takes both."""
    engine = engines[False]
    target, seen = engine.target, Counter()
    decoder = engine.decoder
    for name in ("logits", "argmax"):
        fn = getattr(target, name)

        def spy(hidden, _fn=fn, _name=name):
            seen[_name] += hidden.reshape(-1, hidden.shape[-1]).shape[0]
            return _fn(hidden)

        setattr(target, name, spy)
    try:
        slots = [
            decoder.add(p, n_predict=1, sampling=s, spec=SpecOptions(type="none"), stop_ids=frozenset())
            for p, s in ((PROMPTS[1], GREEDY), (PROMPTS[2], SAMPLED))
        ]
        seen.clear()  # (prefills take no head)
        committed = decoder.step()
    finally:
        for name in ("logits", "argmax"):
            target.__dict__.pop(name, None)
        for slot in slots:
            decoder.release(slot)
    assert sorted(committed) == [0, 1]
    # one position each: the greedy row's argmax (through the full head: one logits row), the
    # sampled row's logits; before the seam the sampled rows' logits covered every row again
    assert seen == {"argmax": 1, "logits": 2}


def _run(capsys, *flags: str) -> tuple[int, dict | None, str]:
    argv = ["run", "-m", str(TARGET), "-md", str(DRAFTER), "--prompt-ids", "2,7,100,31,7,100"]
    argv += ["-n", "12", "--temp", "0", "--device", "cpu", "--dtype", "float32", "-c", "64", "--json", *flags]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_the_cuda_graphs_flag_of_run_reaches_the_engine(capsys, monkeypatch):
    native_or_skip()
    monkeypatch.setenv(GRAPHS_EAGER_ENV, "1")
    rounds = Counter()
    verify = GraphBatchDecoder._verify_rows

    def counted(self, feeds, starts):
        rounds["graph"] += 1
        return verify(self, feeds, starts)

    monkeypatch.setattr(GraphBatchDecoder, "_verify_rows", counted)
    code, plain, _ = _run(capsys)
    assert code == 0 and rounds["graph"] == 0
    code, graphs, err = _run(capsys, "--cuda-graphs")
    assert code == 0 and rounds["graph"] > 0
    assert graphs["token_ids"] == plain["token_ids"] and len(plain["token_ids"]) == 12
    assert "notice: --cuda-graphs: rounds of 1.." in err
    monkeypatch.delenv(GRAPHS_EAGER_ENV)
    code, _, err = _run(capsys, "--cuda-graphs")
    assert code == 2 and "--cuda-graphs needs --device cuda" in err


def test_the_scale_of_a_float_embedding_is_made_once_and_exact():
    """`ScaledEmbedding` multiplies by its scale rounded to the weight dtype, as a tensor made on
    the first call (a tensor made from host data per call is what a CUDA graph cannot capture)."""
    from gemma_mtp.models.gemma import ScaledEmbedding

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        embed = ScaledEmbedding(50, 24, 24**0.5).to(dtype)
        tokens = torch.tensor([[3, 49, 0, 3]])
        want = embed.weight[tokens] * torch.tensor(24**0.5, dtype=dtype)
        with torch.inference_mode():
            first = embed(tokens)
        made = embed._scale
        assert torch.equal(first, want) and made.dtype == dtype
        assert torch.equal(embed(tokens), want) and embed._scale is made
        out = embed(tokens)  # outside inference mode, with autograd on: the scale can be saved
        out.float().sum().backward()
        assert embed.weight.grad is not None
