"""Specification of `gemma_mtp.cache.KVCache`: O(1) rollback, sliding rings, padding, bounds.

Every test runs a tiny random Gemma 4 target (sliding window 4, PLE, KV-shared layers) through the
cache and compares against a reference that never needed the feature under test: a fresh cache, a
single full-sequence prefill, or the same row run alone. The model runs in float64 (its norms still
round through float32), so the tolerances measure cache logic, not GEMM reduction order.
"""

from __future__ import annotations

import random

import pytest
import torch

from gemma_mtp.cache import KVCache
from gemma_mtp.config import FULL, SLIDING, config_from_dict
from gemma_mtp.models.gemma import GemmaModel

WINDOW = 4
VOCAB = 64

# 6 layers: S S F S S F; the last two reuse KV (layer 4 reads layer 3, layer 5 reads layer 2).
CONFIG = config_from_dict(
    {
        "model_type": "gemma4_text",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 6,
        "layer_types": [SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL],
        "num_kv_shared_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "global_head_dim": 16,
        "sliding_window": WINDOW,
        "hidden_size_per_layer_input": 4,
        "vocab_size_per_layer_input": VOCAB,
        "max_position_embeddings": 4096,
    }
)


@pytest.fixture(scope="module")
def model() -> GemmaModel:
    torch.manual_seed(0)
    net = GemmaModel(CONFIG)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
            if p.dim() == 1:  # norm scales: keep them near 1 so every layer matters
                p.add_(1.0)
        for name, buf in net.named_buffers():
            if name.endswith("layer_scalar"):
                buf.fill_(0.9)
    # float64 so that the tolerances below measure the cache, not GEMM reduction order: in float32
    # a 40-token prefill and 40 one-token steps already differ by ~1e-4 on these random weights
    return net.double().eval().requires_grad_(False)


def tokens_of(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(n)]


def forward(model: GemmaModel, cache: KVCache, ids: list[int], start: int) -> torch.Tensor:
    """Feed `ids` to row 0 at positions start.. and return their logits [T, V]."""
    tokens = torch.tensor([ids])
    positions = torch.arange(start, start + len(ids))[None]
    with torch.inference_mode():
        return model.logits(model(tokens, positions, cache).hidden)[0]


def prefill_logits(model: GemmaModel, ids: list[int]) -> torch.Tensor:
    cache = model.make_cache(max_context=len(ids) + 8, max_draft=2)
    return forward(model, cache, ids, 0)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


# -- rollback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_extra", [1, 2, 3])
def test_rollback_then_continue_equals_a_cache_that_never_saw_the_extra_tokens(model, n_extra):
    prompt, extra, cont = tokens_of(1, 10), tokens_of(2, n_extra), tokens_of(3, 3)
    spec = model.make_cache(max_context=32, max_draft=3)
    forward(model, spec, prompt, 0)
    forward(model, spec, extra, len(prompt))
    spec.rollback([len(prompt)])
    got = forward(model, spec, cont, len(prompt))

    clean = model.make_cache(max_context=32, max_draft=3)
    forward(model, clean, prompt, 0)
    want = forward(model, clean, cont, len(prompt))
    assert_same(got, want, atol=1e-6)


def test_forward_sets_lengths_to_last_position_plus_one(model):
    cache = model.make_cache(max_context=32, max_draft=2)
    forward(model, cache, tokens_of(4, 5), 0)
    assert cache.lengths.tolist() == [5]
    forward(model, cache, tokens_of(5, 2), 5)
    assert cache.lengths.tolist() == [7]


@pytest.mark.parametrize("bad", [[6], [-1]])
def test_rollback_can_only_shrink(model, bad):
    cache = model.make_cache(max_context=32, max_draft=2)
    forward(model, cache, tokens_of(4, 5), 0)
    with pytest.raises(ValueError):
        cache.rollback(bad)
    assert cache.lengths.tolist() == [5]


def test_rollback_sets_each_rows_length(model):
    cache = model.make_cache(batch_size=2, max_context=32, max_draft=2)
    tokens = torch.tensor([tokens_of(6, 6), tokens_of(7, 6)])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, -1, -1]])
    with torch.inference_mode():
        model(tokens, positions, cache)
    assert cache.lengths.tolist() == [6, 4]
    cache.rollback([3, 4])
    assert cache.lengths.tolist() == [3, 4]
    with pytest.raises(ValueError):
        cache.rollback([2, 5])
    assert cache.lengths.tolist() == [3, 4]


# -- sliding ring wrap-around ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3])
def test_ring_wraps_around_and_survives_rejected_drafts(model, chunk):
    # window 4 + max_draft 2 + 1 = a ring of 7 slots, wrapped ~6 times over 40 tokens
    seq = tokens_of(8, 40)
    want = prefill_logits(model, seq)
    cache = model.make_cache(max_context=64, max_draft=2)
    assert cache.ring_size == WINDOW + 2 + 1
    rng = random.Random(chunk)
    pos = 0
    while pos < len(seq):
        # a round feeds up to max_draft + 1 tokens: `n_ok` real ones, then rejected drafts
        n_ok = min(rng.randint(1, chunk), len(seq) - pos)
        n_bad = rng.randint(0, 3 - n_ok) if pos + 3 <= 64 else 0
        ids = seq[pos : pos + n_ok] + tokens_of(1000 + pos, n_bad)
        got = forward(model, cache, ids, pos)
        assert_same(got[:n_ok], want[pos : pos + n_ok], atol=1e-5)
        pos += n_ok
        cache.rollback([pos])
    assert cache.lengths.tolist() == [len(seq)]


# -- memory ------------------------------------------------------------------------------------


def test_sliding_memory_does_not_grow_with_context_but_full_memory_grows_linearly():
    sizes = {c: KVCache(CONFIG, max_context=c, max_draft=8).memory_bytes() for c in (64, 1024, 2048, 4096)}
    assert {sizes[c][SLIDING] for c in sizes} == {sizes[64][SLIDING]}
    full = {c: sizes[c][FULL] for c in sizes}
    assert full[4096] - full[2048] == 2 * (full[2048] - full[1024]) > 0
    # full layers hold one slot per position: 2 (K and V) * kv_heads * head_dim * 4 bytes each
    per_position = sum(2 * s.kv_heads * s.head_dim * 4 for s in CONFIG.layers if s.owns_kv and s.kind == FULL)
    assert full[2048] - full[1024] == 1024 * per_position
    # sliding layers hold about window + max_draft + 1 slots, however long the context
    per_slot = sum(2 * s.kv_heads * s.head_dim * 4 for s in CONFIG.layers if s.owns_kv and s.kind == SLIDING)
    assert sizes[4096][SLIDING] <= (WINDOW + 8 + 2) * per_slot


# -- batches and padding -----------------------------------------------------------------------


def test_batched_rows_with_padding_match_each_row_run_alone(model):
    prompts = [tokens_of(10, 7), tokens_of(11, 4)]
    steps = [tokens_of(12, 3), tokens_of(13, 3)]
    width = max(map(len, prompts))
    tokens = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    positions = torch.tensor([list(range(len(p))) + [-1] * (width - len(p)) for p in prompts])
    batch = model.make_cache(batch_size=2, max_context=32, max_draft=2)
    with torch.inference_mode():
        out = model.logits(model(tokens, positions, batch).hidden)
        step_out = []
        for i in range(3):
            tok = torch.tensor([[steps[0][i]], [steps[1][i]]])
            pos = torch.tensor([[len(prompts[0]) + i], [len(prompts[1]) + i]])
            step_out.append(model.logits(model(tok, pos, batch).hidden))
    for row, prompt in enumerate(prompts):
        alone = model.make_cache(max_context=32, max_draft=2)
        assert_same(out[row, : len(prompt)], forward(model, alone, prompt, 0), atol=1e-5)
        for i in range(3):
            want = forward(model, alone, [steps[row][i]], len(prompt) + i)
            assert_same(step_out[i][row], want, atol=1e-5)


def test_padding_positions_write_nothing(model):
    prompts = [tokens_of(14, 9), tokens_of(15, 3)]
    width = max(map(len, prompts))
    # left padding this time: the padding is not at the end of the row
    tokens = torch.tensor([[5] * (width - len(p)) + p for p in prompts])
    positions = torch.tensor([[-1] * (width - len(p)) + list(range(len(p))) for p in prompts])
    batch = model.make_cache(batch_size=2, max_context=32, max_draft=2)
    with torch.inference_mode():
        model(tokens, positions, batch)
    alone = model.make_cache(max_context=32, max_draft=2)
    forward(model, alone, prompts[1], 0)

    assert batch.ring_positions[1, : batch.ring_size].tolist() == alone.ring_positions[0, :-1].tolist()
    for layer, keys in batch.keys.items():
        for buf, ref in ((keys, alone.keys[layer]), (batch.values[layer], alone.values[layer])):
            kind = CONFIG.layers[layer].kind
            n_slots = batch.max_context if kind == FULL else batch.ring_size
            # addressable slots of row 1 hold exactly what running it alone wrote (zeros elsewhere)
            assert_same(buf[1, :, :n_slots], ref[0, :, :n_slots], atol=1e-6)
            if kind == FULL:
                assert not buf[1, :, len(prompts[1]) : n_slots].any()


def test_a_row_fed_only_padding_keeps_its_length_and_kv(model):
    batch = model.make_cache(batch_size=2, max_context=32, max_draft=2)
    tokens = torch.tensor([tokens_of(16, 5), tokens_of(17, 5)])
    with torch.inference_mode():
        model(tokens, torch.arange(5).expand(2, 5), batch)
        before = {k: v[1].clone() for k, v in batch.keys.items()}
        ring_before = batch.ring_positions[1].clone()
        model(torch.tensor([[3, 3], [3, 3]]), torch.tensor([[5, 6], [-1, -1]]), batch)
    assert batch.lengths.tolist() == [7, 5]
    assert torch.equal(batch.ring_positions[1], ring_before)
    for layer, keys in batch.keys.items():
        n_slots = batch.max_context if CONFIG.layers[layer].kind == FULL else batch.ring_size
        assert torch.equal(keys[1, :, :n_slots], before[layer][:, :n_slots])


# -- bounds ------------------------------------------------------------------------------------


def test_a_forward_past_max_context_raises_and_changes_nothing(model):
    cache = model.make_cache(max_context=8, max_draft=2)
    with pytest.raises(ValueError):
        forward(model, cache, tokens_of(18, 9), 0)
    assert cache.lengths.tolist() == [0]
    forward(model, cache, tokens_of(18, 8), 0)
    with pytest.raises(ValueError):
        forward(model, cache, [1], 8)
    assert cache.lengths.tolist() == [8]


# -- shared KV view ----------------------------------------------------------------------------


def visible(view, query: int) -> set[int]:
    mask = view.mask(torch.tensor([[query]]))  # [1, 1, 1, S]
    return set(view.positions[0][mask[0, 0, 0]].tolist())


def test_shared_kv_view_hides_rolled_back_and_out_of_window_positions(model):
    # a drafter querying position q sees the last window + 1 positions before it, as the reference
    # assistant does: max(0, q - window - 1) <= p < lengths
    cache = model.make_cache(max_context=32, max_draft=2)
    forward(model, cache, tokens_of(19, 10), 0)
    with torch.inference_mode():
        out = model(torch.tensor([[1, 2]]), torch.tensor([[10, 11]]), cache)
    live = out.shared_kv[SLIDING]  # taken before the rollback: the view follows `lengths`
    assert visible(live, 12) == {7, 8, 9, 10, 11}
    cache.rollback([10])
    fresh = cache.shared_kv(SLIDING)
    for view in (live, fresh):
        assert visible(view, 10) == {5, 6, 7, 8, 9}
    assert visible(cache.shared_kv(FULL), 10) == set(range(10))


def test_shared_kv_view_keeps_the_whole_window_after_rejecting_max_draft_drafts(model):
    cache = model.make_cache(max_context=64, max_draft=2)
    forward(model, cache, tokens_of(21, 30), 0)  # the ring has wrapped several times
    forward(model, cache, tokens_of(22, 3), 30)  # pending token + 2 drafts
    cache.rollback([31])  # both drafts rejected
    assert visible(cache.shared_kv(SLIDING), 31) == set(range(31 - WINDOW - 1, 31))


def test_shared_kv_view_reads_the_last_kv_owning_layer_of_its_kind(model):
    cache = model.make_cache(max_context=32, max_draft=2)
    forward(model, cache, tokens_of(20, 6), 0)
    view = cache.shared_kv(SLIDING)
    owner = CONFIG.last_kv_owner(SLIDING)
    assert owner == 3
    span = min(cache.ring_size, 6)  # only the slots filled so far, until the ring wraps
    assert torch.equal(view.keys, cache.keys[owner][:, :, :span])
    assert view.window == WINDOW


def test_rolling_back_past_what_the_ring_holds_is_refused(model):
    cache = model.make_cache(max_context=64, max_draft=2)
    forward(model, cache, tokens_of(23, 20), 0)
    forward(model, cache, tokens_of(24, 5), 20)  # more than max_draft + 1 past the commit point
    with pytest.raises(ValueError, match="past the sliding ring"):
        cache.rollback([20])
    cache.rollback([23])  # max_draft (2) back from what was written: still fine
    cache.rollback([0])  # forgetting everything is always fine


@pytest.mark.parametrize("rows", [[1], [0, 2], [1, 2]], ids=["one", "gather", "slice"])
def test_a_forward_over_some_rows_equals_each_row_alone(model, rows):
    """Idle slots are left out of a forward; contiguous rows are a view, others are gathered."""
    cache = model.make_cache(batch_size=3, max_context=48, max_draft=2)
    seqs = {r: tokens_of(30 + r, 20 + 3 * r) for r in range(3)}
    with torch.inference_mode():
        for r, ids in seqs.items():  # prefill each row on its own, in chunks that wrap the ring
            for start in range(0, len(ids), 6):
                chunk = ids[start : start + 6]
                model(torch.tensor([chunk]), torch.arange(start, start + len(chunk))[None], cache, rows=[r])
        nxt = {r: tokens_of(40 + r, 3) for r in rows}
        starts = [len(seqs[r]) for r in rows]
        tokens = torch.tensor([nxt[r] for r in rows])
        positions = torch.stack([torch.arange(s, s + 3) for s in starts])
        got = model.logits(model(tokens, positions, cache, rows=rows).hidden)
    assert cache.lengths.tolist() == [len(seqs[r]) + (3 if r in rows else 0) for r in range(3)]
    for i, r in enumerate(rows):
        torch.testing.assert_close(got[i], prefill_logits(model, seqs[r] + nxt[r])[-3:], atol=1e-5, rtol=0)
