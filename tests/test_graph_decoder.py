"""`GraphBatchDecoder` (the `--cuda-graphs` decoder) on the CPU, its static path run eagerly
(`GEMMA_MTP_GRAPHS_EAGER=1`): greedy MTP through it is plain greedy, token for token, and drafts
and accepts exactly what the plain decoder's MTP does; rounds take the static step (forward and
head, through batch.py's `_verify_rows` seam) and prompt prefills the plain forward. And the
option: `--cuda-graphs` parses into `LoadOptions` and is refused on the CPU unless its static
path runs eagerly (the engine end to end: test_engine_cuda_graphs.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from native_required import native_or_skip

from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.engine.graph_decoder import GraphBatchDecoder
from gemma_mtp.engine.options import GRAPHS_EAGER_ENV, LoadOptions
from gemma_mtp.errors import UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.speculative.mtp import MTPDrafter
from gemma_mtp.weights.gguf_loader import load_gguf_model

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
GREEDY = SamplingParams(temperature=0)
PROMPTS = [[2, *range(40, 53)], [2, 9, 9, 4], [2, 7, 100, 31, 7, 100]]  # 14 tokens: past the window (8)


@pytest.fixture(scope="module")
def pair():
    target = load_gguf_model(FIXTURES / "e2b.f32.gguf", dtype="float32")[0]
    assistant = load_gguf_model(FIXTURES / "e2b_assistant_centroids.f32.gguf", dtype="float32")[0]
    return target, assistant


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv(GRAPHS_EAGER_ENV, "1")


def decode(cls, pair, batch: int, spec: SpecOptions):
    target, assistant = pair
    decoder = cls(target, max_batch=batch, ctx_size=64, max_draft=4)
    decoder.drafters = {"mtp": MTPDrafter(target, assistant, decoder.cache)}
    outs, stats = [], []
    for i in range(0, len(PROMPTS), batch):
        slots = [
            decoder.add(p, n_predict=20, sampling=GREEDY, spec=spec, stop_ids=frozenset())
            for p in PROMPTS[i : i + batch]
        ]
        while decoder.active():
            decoder.step()
        outs += [s.generated for s in slots]
        stats += [(s.stats.drafted, s.stats.accepted) for s in slots]
        for s in slots:
            decoder.release(s)
    return outs, stats, decoder


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_max", [1, 2, 4])
def test_greedy_mtp_through_the_static_step_is_plain_greedy(pair, n_max, batch):
    native_or_skip()
    plain, _, _ = decode(BatchDecoder, pair, 1, SpecOptions())
    want, want_stats, _ = decode(BatchDecoder, pair, batch, SpecOptions(type="mtp", n_max=n_max))
    got, got_stats, decoder = decode(GraphBatchDecoder, pair, batch, SpecOptions(type="mtp", n_max=n_max))
    assert got == plain == want
    assert got_stats == want_stats  # the same drafts accepted: the same hidden states and KV
    widths = {key[1] for key in decoder.static.shapes}  # verify steps, and prompts of 4 and 6 tokens
    assert widths <= {1, 2, 3, 4, 5} and widths & set(range(2, n_max + 2))


def test_plain_decoding_through_the_static_step_is_plain_greedy(pair):
    native_or_skip()
    want, _, _ = decode(BatchDecoder, pair, 3, SpecOptions())
    got, _, decoder = decode(GraphBatchDecoder, pair, 3, SpecOptions())
    assert got == want
    # decode steps only: the prompts of 4 and 6 tokens (3 and 5 positions) took the plain forward
    assert {key[1] for key in decoder.static.shapes} == {1}


def test_prompt_prefills_take_the_plain_forward(pair):
    target, _ = pair
    decoder = GraphBatchDecoder(target, max_batch=1, ctx_size=64, max_draft=4)
    decoder.add(PROMPTS[0], n_predict=2, sampling=GREEDY, spec=SpecOptions(), stop_ids=frozenset())
    assert not decoder.static.shapes  # 13 prompt positions > max_draft + 1
    decoder.step()
    assert list(decoder.static.shapes) == [(1, 1, decoder.static.span_for(14), True)]  # pending token at 13


def test_the_decoder_off_cuda_without_the_eager_path_is_refused(pair, monkeypatch):
    monkeypatch.delenv(GRAPHS_EAGER_ENV)
    with pytest.raises(UsageError, match="--cuda-graphs needs a CUDA device"):
        GraphBatchDecoder(pair[0], max_batch=1, ctx_size=64)


def test_cuda_graphs_flag_parses_into_load_options_and_is_refused_on_the_cpu(monkeypatch):
    from gemma_mtp.cli.model_args import add_load_arguments, load_options_from_args

    parser = argparse.ArgumentParser()
    add_load_arguments(parser, model_help="target")
    assert parser.parse_args([]).cuda_graphs is False
    assert LoadOptions().cuda_graphs is False
    assert load_options_from_args(parser.parse_args(["--cuda-graphs", "--device", "cuda"])).cuda_graphs
    assert LoadOptions(cuda_graphs=True, device="cpu").cuda_graphs  # the eager path (tests)
    monkeypatch.delenv(GRAPHS_EAGER_ENV)
    with pytest.raises(UsageError, match="--cuda-graphs needs --device cuda"):
        LoadOptions(cuda_graphs=True, device="cpu")
