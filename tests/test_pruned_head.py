"""The exact pruned output head (`models/head.py`) on the real Gemma 3 270M: the full head's argmax,
top k and logits bit for bit, and greedy generation unchanged, plain and speculative."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from asset_helpers import gemma3_270m
from gguf import GGMLQuantizationType
from native_required import native_or_skip

import gemma_mtp
from gemma_mtp.engine.options import HEAD_MODES as OPTION_MODES
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import UsageError
from gemma_mtp.gguf.codecs import encode
from gemma_mtp.models.head_build import HEAD_MODES, build_pruned_head, install_output_head
from gemma_mtp.models.head_codes import encode_q4_k, kernel_rounding_ok, q4_k_part_max
from gemma_mtp.ops import argmax_rows
from gemma_mtp.quant.blocks import GGUFBlockWeight
from gemma_mtp.sampling import SamplingParams, _top_k_sorted, probs_from_logits
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine():
    native_or_skip()
    path = gemma3_270m()
    engine = gemma_mtp.load(
        str(path), str(REPO / "assets" / "drafters" / "gemma3-270m-mtp.gguf"), head="pruned"
    )
    engine.tokenizer = load_tokenizer(path)
    assert engine.target.output_head is not None, engine.load_report.notices
    return engine


def _texts(engine) -> dict[str, list[int]]:
    tok = engine.tokenizer
    the = tok.encode(" the")
    return {
        "prose": [2, *tok.encode((REPO / "README.md").read_text())[:800]],
        "code": [2, *tok.encode((REPO / "src/gemma_mtp/sampling.py").read_text())[:800]],
        "repeated": [2, *(the * 200), *([236743, 1366] * 100)],
    }


@pytest.fixture(scope="module")
def hidden(engine) -> torch.Tensor:
    """The target's final hidden states, teacher-forced over prose, code and repeated tokens."""
    target, out = engine.target, []
    with torch.inference_mode():
        for ids in _texts(engine).values():
            cache = target.make_cache(batch_size=1, max_context=len(ids) + 1, max_draft=1)
            out.append(target(torch.tensor([ids]), torch.arange(len(ids))[None], cache).hidden[0])
    return torch.cat(out)


def _full_logits(engine, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return engine.target.logits(x)


def test_argmax_is_the_full_heads_on_thousands_of_positions(engine, hidden):
    head = engine.target.output_head
    assert hidden.shape[0] >= 2000
    before = head.stats.positions
    for lo in range(0, hidden.shape[0], 128):
        x = hidden[lo : lo + 128]
        want = argmax_rows(_full_logits(engine, x))
        got = [int(head.argmax(x[i : i + 1])[0]) for i in range(x.shape[0])]
        assert got == want, f"positions {lo}..{lo + 127}"
    assert head.stats.positions - before == hidden.shape[0]
    assert head.stats.rows_per_position() < 0.1 * head.vocab  # it did prune


def test_argmax_over_two_positions_at_once(engine, hidden):
    head = engine.target.output_head
    x = hidden[:400]
    want = argmax_rows(_full_logits(engine, x))
    got = [i for lo in range(0, 400, 2) for i in head.argmax(x[lo : lo + 2]).tolist()]
    assert got == want


def test_the_bound_holds_for_every_row(engine, hidden):
    """Every row's exact product is at most its upper bound plus the rounding margin (the only claim
    the pruning rests on), at the positions where the bound is tightest and loosest."""
    head = engine.target.output_head
    for at in range(0, hidden.shape[0], 97):
        x = hidden[at : at + 1]
        exact = _full_logits(engine, x)[0].double()
        u, margin = head.upper(x)
        upper = u[0].double() + float(margin[0])
        assert bool((exact <= upper).all()), f"position {at}: {int((exact > upper).sum())} rows above"


def test_top_k_is_the_full_heads_sorted_top_k(engine, hidden):
    """Where it answers (small k: the k-th best logit lies well above the bulk), the pruned top k is
    the full head's first k of a stable descending sort, values bit for bit; else None."""
    target = engine.target
    for k in (1, 5):
        answered = 0
        for at in range(0, hidden.shape[0], 53):
            x = hidden[at : at + 1]
            out = target.top_k(x, k)
            if out is None:
                continue
            answered += 1
            full_values, full_ids = _top_k_sorted(_full_logits(engine, x), k)
            assert torch.equal(out[1], full_ids) and torch.equal(out[0], full_values), (k, at)
        assert answered >= (0.9 if k == 1 else 0.3) * len(range(0, hidden.shape[0], 53)), k


def test_sampling_from_the_top_k_is_the_full_distribution(engine, hidden):
    """probs_from_logits over -inf outside the exact top k equals it over the full logits, bit for
    bit, for top-k sampling with any top-p, min-p and temperature."""
    checked = 0
    for at in range(0, 200, 7):
        x = hidden[at : at + 1]
        full = _full_logits(engine, x)
        for params in (
            SamplingParams(temperature=0.8, top_k=3, top_p=0.95, min_p=0.05),
            SamplingParams(temperature=1.3, top_k=2, top_p=1.0, min_p=0.0),
        ):
            out = engine.target.top_k(x, params.top_k)
            if out is None:
                continue
            sparse = torch.full_like(full, float("-inf")).scatter_(1, out[1], out[0])
            assert torch.equal(probs_from_logits(sparse, params), probs_from_logits(full, params))
            checked += 1
    assert checked >= 10


def test_softcapped_argmax_is_the_full_heads(engine, hidden):
    """With a final logit softcap (Gemma 4's 30) the argmax is still the capped full head's."""
    pruned = engine.target.output_head
    weight = engine.target.embed_tokens.table
    capped = build_pruned_head(weight, _energy(pruned), cap=30.0)
    for at in range(0, hidden.shape[0], 41):
        x = hidden[at : at + 1]
        want = argmax_rows(torch.tanh(_full_logits(engine, x) / 30.0) * 30.0)
        assert int(capped.argmax(x)[0]) == want[0], at
    assert capped.top_k(hidden[:1], 5) is None  # capped values: the full head decides


def _energy(head) -> torch.Tensor:
    """An energy profile that keeps the dense inputs of ``head`` (for rebuilding it)."""
    energy = torch.ones(head.width, dtype=torch.float64)
    energy[head.dense_cols] = 1e6
    return energy


def test_non_finite_input_takes_the_full_head(engine, hidden):
    head = engine.target.output_head
    x = hidden[:1].clone()
    x[0, 7] = float("nan")
    before = head.stats.full_rows
    assert int(head.argmax(x)[0]) == argmax_rows(_full_logits(engine, x))[0]
    assert head.stats.full_rows == before + 1
    x[0, 7] = float("inf")
    assert int(head.argmax(x)[0]) == argmax_rows(_full_logits(engine, x))[0]


def test_too_many_candidates_take_the_full_head(engine, hidden):
    head = engine.target.output_head
    before, limit = head.stats.full_rows, head.max_candidates
    head.max_candidates = 1
    try:
        x = hidden[5:6]
        assert int(head.argmax(x)[0]) == argmax_rows(_full_logits(engine, x))[0]
        assert engine.target.top_k(x, 40) is None
    finally:
        head.max_candidates = limit
    assert head.stats.full_rows > before


def test_more_positions_than_the_head_takes_use_the_full_head(engine, hidden):
    target = engine.target
    head = target.output_head
    x = hidden[:8]
    assert not head.applies(x)
    before = head.stats.positions
    assert target.argmax(x[None]).tolist() == [argmax_rows(_full_logits(engine, x))]
    assert head.stats.positions == before


def test_ties_go_to_the_first_index():
    """A head whose best row appears several times (the same bytes, so the same product): the
    pruned argmax is the first copy's index, as the full head's (torch.argmax's rule)."""
    native_or_skip()
    gen = torch.Generator().manual_seed(0)
    vocab, width = 4096, 128
    values = torch.randn(vocab, width, generator=gen) * 0.05
    values[[3000, 17, 2048, 4095]] = values[1234].clone()  # four copies of row 1234, the best one
    data = torch.from_numpy(encode(values.numpy(), GGMLQuantizationType.Q8_0))
    weight = GGUFBlockWeight(data, GGMLQuantizationType.Q8_0, width)
    head = build_pruned_head(weight, torch.ones(width, dtype=torch.float64), cap=None)
    x = (values[1234] * 40 + torch.randn(width, generator=gen) * 0.1)[None]
    full = head.full_logits(x)
    ties = (full[0] == full[0].max()).nonzero().squeeze(1).tolist()
    assert ties == [17, 1234, 2048, 3000, 4095]
    assert int(head.argmax(x)[0]) == 17 == argmax_rows(full)[0]
    values_k, ids_k = head.top_k(x, 3)
    assert ids_k[0].tolist() == [17, 1234, 2048]


def test_q4_k_encoding_stays_within_each_sub_blocks_range():
    """The copy's blocks decode (as the kernel reads them) to values within a step of the input,
    zero sub-blocks to zeros, and `q4_k_part_max` bounds every weight's parts."""
    native_or_skip()
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(64, 512, generator=gen) * 0.05
    values[3, :32] = 0.0
    values[5] = values[5].abs() + 0.01  # no negative values: a zero offset
    data, scales = encode_q4_k(values)
    decoded = GGUFBlockWeight(data, GGMLQuantizationType.Q4_K, 512).rows(torch.arange(64))
    step = (scales["d"][..., None] * scales["sc"]).repeat_interleave(32, dim=-1).view(64, 512)
    assert bool(((decoded - values).abs() <= step / 2 + 1e-6).all())
    assert bool((decoded[3, :32] == 0).all())
    assert float(decoded.abs().max()) <= q4_k_part_max(scales)


def test_the_kernel_rounds_activations_as_the_bound_assumes():
    assert kernel_rounding_ok(native_or_skip())


def test_greedy_generation_is_unchanged_by_the_pruned_head(engine):
    """Plain, MTP (the embedded drafter) and n-gram greedy runs give the same tokens with the
    pruned head on and off; it answers every verified position (up to n_max + 1 at a time here,
    beyond the `max_rows` it takes by default)."""
    target, head = engine.target, engine.target.output_head
    greedy = SamplingParams(temperature=0)
    texts = ("def fibonacci(n):\n", "The cat sat on the", "1, 2, 3, 4,")
    specs = [SpecOptions(type="none")]
    specs += [SpecOptions(type=kind, n_max=n) for kind in ("mtp", "ngram") for n in (1, 3)]
    limit = head.max_rows
    try:
        head.max_rows = 4
        for ids in (engine.tokenizer.encode(t) for t in texts):
            for spec in specs:
                runs = {}
                for on in (False, True):
                    target.output_head = head if on else None
                    before = head.stats.positions
                    out = engine.generate([2, *ids], n_predict=24, sampling=greedy, spec=spec)
                    runs[on] = out.token_ids
                    if on:
                        assert head.stats.positions - before >= len(out.token_ids), spec
                assert runs[True] == runs[False], (spec, ids)
    finally:
        target.output_head, head.max_rows = head, limit


def test_a_second_load_reads_the_cache_and_auto_is_the_full_head(engine):
    try:
        assert install_output_head(engine.target, "full") is None and engine.target.output_head is None
        assert install_output_head(engine.target, "auto") is None and engine.target.output_head is None
    finally:
        notice = install_output_head(engine.target, "pruned")
    assert "cached" in notice and "built" not in notice and engine.target.output_head is not None


def test_head_option_names_and_checks():
    assert OPTION_MODES == HEAD_MODES
    assert LoadOptions(head="pruned").head == "pruned"
    with pytest.raises(UsageError, match="--head"):
        LoadOptions(head="sparse")


def test_head_flag_reaches_the_load_options():
    import argparse

    from gemma_mtp.cli.model_args import add_load_arguments, load_options_from_args

    parser = argparse.ArgumentParser()
    add_load_arguments(parser, model_help="model")
    assert load_options_from_args(parser.parse_args(["--head", "full"])).head == "full"
    assert load_options_from_args(parser.parse_args([])).head == LoadOptions().head
