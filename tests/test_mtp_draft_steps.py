"""The MTP drafter's round (masks and rotary tables made once by `AssistantModel.prepare`, then
`step` per draft, no post-projection after the last) drafts exactly what a loop calling the
assistant's full `forward` at every step drafts, bit for bit, for a batch whose rows have different
KV lengths and sliding windows already wrapped."""

from __future__ import annotations

import hf_reference as ref
import pytest
import torch

from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.models.assistant import CentroidHead
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import DraftCollector, DraftRequest, SpecOptions, greedy_from_candidates
from gemma_mtp.speculative.mtp import MTPDrafter

GREEDY = SamplingParams(temperature=0)
SPEC = SpecOptions(type="mtp", n_max=4)
# one prompt longer than the sliding window (8), one shorter
PROMPTS = [ref.random_tokens(1, 13, seed=40)[0].tolist(), ref.random_tokens(1, 5, seed=41)[0].tolist()]


@pytest.fixture(scope="module", params=[True, False], ids=["centroids", "dense"])
def decoder(reference_models, request):
    target, _ = ref.load_ours(reference_models.target("e2b").path)
    assistant, _ = ref.load_ours(reference_models.assistant("e2b", ordered=request.param).path)
    decoder = BatchDecoder(target, max_batch=2, ctx_size=64)
    decoder.drafters = {"mtp": MTPDrafter(target, assistant, decoder.cache)}
    for prompt in PROMPTS:
        decoder.add(prompt, n_predict=16, sampling=GREEDY, spec=SPEC, stop_ids=frozenset())
    for _ in range(2):  # a few rounds, so rows have accepted and rejected drafts behind them
        decoder.step()
    return decoder


@torch.inference_mode()
def forward_per_step(decoder: BatchDecoder, requests: list[DraftRequest]) -> dict[int, list[int]]:
    """The drafting loop with `AssistantModel.forward` (all per-round work redone at every step)."""
    drafter = decoder.drafters["mtp"]
    target, assistant, cache = drafter.target, drafter.assistant, decoder.cache
    token = torch.tensor([[r.tokens[-1]] for r in requests])
    positions = cache.lengths[:, None]
    shared = {kind: cache.shared_kv(kind) for kind in cache.config.layer_kinds}
    state, drafts = decoder.hidden, {r.row: [] for r in requests}
    for _ in range(SPEC.n_max):
        out = assistant(torch.cat([target.embed(token), state], dim=-1), positions, shared)
        token = out.logits.argmax(dim=-1)
        state = out.hidden
        for r in requests:
            drafts[r.row].append(int(token[r.row, 0]))
    return drafts


def test_prepared_round_drafts_what_a_forward_per_step_drafts(decoder):
    slots = decoder.active()
    assert [s.row for s in slots] == [0, 1]
    assert len({int(decoder.cache.lengths[s.row]) for s in slots}) == 2
    requests = [DraftRequest(s.row, s.tokens, SPEC.n_max, GREEDY, SPEC, None) for s in slots]
    drafts = decoder.drafters["mtp"].propose(requests, decoder.hidden)
    assert {row: d.tokens for row, d in drafts.items()} == forward_per_step(decoder, requests)


@torch.inference_mode()
def test_step_head_and_projection_equal_forward(decoder):
    drafter = decoder.drafters["mtp"]
    assistant, cache = drafter.assistant, decoder.cache
    positions = cache.lengths[:, None]
    shared = {kind: cache.shared_kv(kind) for kind in cache.config.layer_kinds}
    token = torch.tensor([[s.tokens[-1]] for s in decoder.active()])
    inputs = torch.cat([drafter.target.embed(token), decoder.hidden], dim=-1)
    context = assistant.prepare(positions, shared)
    for _ in range(2):  # the context is reused: the second step must not see anything of the first
        x = assistant.step(inputs, context)
        expected = assistant(inputs, positions, shared)
        assert torch.equal(assistant.head(x), expected.logits)
        assert torch.equal(assistant.post_projection(x), expected.hidden)


# ---------------------------------------------------------------- greedy choice among a centroid head's candidates


def full_path(
    ids: torch.Tensor, cand: torch.Tensor, vocab: int, request: DraftRequest
) -> tuple[int | None, list]:
    """What `DraftCollector.offer` does with the head's full [V] logits: (drafted or None, tokens)."""
    collect = DraftCollector([request])
    return collect.offer(request.row, CentroidHead.expand(ids, cand, vocab)), collect.tokens[request.row]


def candidate_path(
    ids: torch.Tensor, cand: torch.Tensor, vocab: int, request: DraftRequest
) -> tuple[int | None, list]:
    """What `MTPDrafter.propose` does for a greedy row of a centroid head."""
    collect = DraftCollector([request])
    choice = greedy_from_candidates(ids, cand, vocab, request.options.p_min)
    if choice is None:
        return full_path(ids, cand, vocab, request)
    return collect.offer_choice(request.row, choice[0], None, choice[1]), collect.tokens[request.row]


def random_candidates(
    gen: torch.Generator, vocab: int, n: int, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randperm(vocab, generator=gen)[:n]  # distinct, unsorted
    if kind == "ties":  # few distinct values: the maximum is shared by several candidates
        cand = torch.randint(-3, 2, (n,), generator=gen).float() / 2
    elif kind == "peaked":  # one candidate far above the others: p close to 1
        cand = torch.randn(n, generator=gen)
        cand[int(torch.randint(n, (1,), generator=gen))] += 12.0
    else:
        cand = torch.randn(n, generator=gen) * float(torch.rand(1, generator=gen) * 8)
        cand[torch.randperm(n, generator=gen)[:3]] = cand.max()  # a tie at the top
    return ids, cand.float()


@pytest.mark.parametrize("vocab,n", [(64, 8), (512, 96), (262_144, 4096)])
@pytest.mark.parametrize("kind", ["ties", "peaked", "spread"])
def test_candidate_greedy_choice_equals_the_full_logit_choice(vocab, n, kind):
    gen = torch.Generator().manual_seed(vocab + n + len(kind))
    for _ in range(20 if vocab < 100_000 else 4):
        ids, cand = random_candidates(gen, vocab, n, kind)
        logits = CentroidHead.expand(ids, cand, vocab)
        p_full = float(torch.softmax(logits, dim=-1)[int(logits.argmax())])
        choice = greedy_from_candidates(ids, cand, vocab, 0.0)
        assert choice == (int(logits.argmax()), 1.0)
        assert choice[0] == int(ids[cand == cand.max()].min())
        with_p = greedy_from_candidates(ids, cand, vocab, 1e-9)
        # the full float32 softmax sums V terms: it may be off by about V float32 ulps
        assert with_p[0] == choice[0] and with_p[1] == pytest.approx(p_full, rel=vocab * 2.0**-23)
        # p_min far from p, equal to it, and one float32 step either side (where the fallback decides)
        p32 = torch.tensor(p_full, dtype=torch.float32)
        near = [torch.nextafter(p32, torch.tensor(s, dtype=torch.float32)).item() for s in (0.0, 1.0)]
        for p_min in [0.0, p_full / 2, p_full, *near, min(1.0, p_full * 1.5), 1.0]:
            spec = SpecOptions(type="mtp", n_max=2, p_min=p_min)
            request = DraftRequest(0, [1], 2, GREEDY, spec, None)
            assert candidate_path(ids, cand, vocab, request) == full_path(ids, cand, vocab, request)


@pytest.mark.parametrize(
    "cand",
    [
        [0.0, float("nan"), 1.0],
        [0.0, float("inf"), 1.0],
        [float("-inf")] * 3,
        [2.0**25] * 3,
        [-(2.0**25)] * 3,
    ],
    ids=["nan", "inf", "all -inf", "equal and large", "equal and very negative"],
)
def test_candidate_greedy_choice_leaves_odd_logits_to_the_full_logits(cand):
    """Where the filler (min - 1) is not below the maximum, the full logits decide (argmax may be 0)."""
    assert greedy_from_candidates(torch.tensor([5, 2, 9]), torch.tensor(cand), 16, 0.0) is None


def test_distinct_candidates_follows_the_token_ordering(decoder):
    head = decoder.drafters["mtp"].assistant.masked_embedding
    if head is None:
        pytest.skip("dense head")
    order = head.token_ordering.clone()
    assert head.distinct_candidates()
    try:
        head.token_ordering[1] = head.token_ordering[0]
        assert not head.distinct_candidates()
    finally:
        head.token_ordering.copy_(order)
    assert head.distinct_candidates()


@pytest.mark.parametrize("p_min", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_candidate_round_drafts_what_the_full_logit_round_drafts(decoder, monkeypatch, p_min, temperature):
    """Greedy (the candidate path) and sampling (full logits from the candidates) rows draft what
    a round over the head's full logits drafts, p_min stops included."""
    drafter = decoder.drafters["mtp"]
    spec = SpecOptions(type="mtp", n_max=4, p_min=p_min)
    sampling = SamplingParams(temperature=temperature)

    def run() -> dict[int, tuple[list[int], torch.Tensor | None]]:
        requests = [
            DraftRequest(s.row, s.tokens, spec.n_max, sampling, spec, torch.Generator().manual_seed(s.row))
            for s in decoder.active()
        ]
        return {row: (d.tokens, d.q) for row, d in drafter.propose(requests, decoder.hidden).items()}

    got = run()
    if drafter.assistant.masked_embedding is not None:
        monkeypatch.setattr(
            type(drafter.assistant.masked_embedding), "distinct_candidates", lambda self: False
        )
    want = run()
    assert got.keys() == want.keys()
    for row in got:
        assert got[row][0] == want[row][0]
        assert (got[row][1] is None) == (want[row][1] is None)
        if got[row][1] is not None:
            assert torch.equal(got[row][1], want[row][1])
