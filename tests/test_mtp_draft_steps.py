"""The MTP drafter's round (masks and rotary tables made once by `AssistantModel.prepare`, then
`step` per draft, no post-projection after the last) drafts exactly what a loop calling the
assistant's full `forward` at every step drafts, bit for bit, for a batch whose rows have different
KV lengths and sliding windows already wrapped."""

from __future__ import annotations

import hf_reference as ref
import pytest
import torch

from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import DraftRequest, SpecOptions
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
