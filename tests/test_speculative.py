"""Speculative decoding is lossless for every strategy, draft length and batch size.

The pair here has a 16-token vocabulary so that even random drafts are sometimes accepted: the
accept, reject, bonus and rollback paths all run. The references are plain greedy decoding in
our engine (itself checked against transformers in test_generate_reference.py) and, for MTP
drafting, transformers' SinglePositionMultiTokenCandidateGenerator.
"""

from __future__ import annotations

from pathlib import Path

import hf_reference as ref
import pytest
import torch

from gemma_mtp.api import Engine
from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.errors import ModelFormatError, UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.speculative.draft_model import DraftModelDrafter
from gemma_mtp.speculative.mtp import MTPDrafter
from gemma_mtp.speculative.ngram import NgramDrafter

GREEDY = SamplingParams(temperature=0)
N_NEW = 24
# prompts longer than the sliding window (8) and one that repeats, for the n-gram drafter
PROMPTS = [
    [2, 5, 7, 9, 11, 3, 4, 5, 7, 9, 12, 13],
    [2, 14, 6, 6, 8, 3, 10, 4, 15, 7],
    [2, 9, 9, 4, 4, 9, 9, 4, 4, 9, 9],
    [2, 3],
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spec_pair")
    text = ref.gemma4_text_kwargs(
        vocab_size=16,
        layer_types=[ref.S, ref.S, ref.F, ref.S, ref.S, ref.F],
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=16,
    )
    target = ref._gemma4(root / "target", 11, text, False)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target.path, assistant.path


@pytest.fixture(scope="module")
def models(pair):
    target, _ = ref.load_ours(pair[0])
    assistant, _ = ref.load_ours(pair[1])
    return target, assistant


def make_decoder(target, assistant, batch: int) -> BatchDecoder:
    decoder = BatchDecoder(target, max_batch=batch, ctx_size=64)
    decoder.drafters = {
        "mtp": MTPDrafter(target, assistant, decoder.cache),
        "ngram": NgramDrafter(),
        "draft": DraftModelDrafter(target.config, target, batch_size=batch, max_context=64),
    }
    return decoder


def run_batch(decoder: BatchDecoder, prompts, spec: SpecOptions, stop_ids=frozenset(), sampling=GREEDY):
    slots = [
        decoder.add(p, n_predict=N_NEW, sampling=sampling, spec=spec, stop_ids=stop_ids) for p in prompts
    ]
    while decoder.active():
        decoder.step()
    for s in slots:
        decoder.release(s)
    return slots


@pytest.fixture(scope="module")
def plain(models):
    decoder = make_decoder(*models, batch=1)
    return {tuple(p): run_batch(decoder, [p], SpecOptions())[0].generated for p in PROMPTS}


@pytest.mark.parametrize("kind", ["mtp", "ngram", "draft"])
@pytest.mark.parametrize("n_max", [1, 2, 3, 4, 5, 6])
def test_greedy_speculation_equals_plain_greedy(models, plain, kind, n_max):
    decoder = make_decoder(*models, batch=1)
    for prompt in PROMPTS:
        (slot,) = run_batch(decoder, [prompt], SpecOptions(type=kind, n_max=n_max))
        assert slot.generated == plain[tuple(prompt)], f"{kind} n_max={n_max} prompt={prompt}"


@pytest.mark.parametrize("kind", ["mtp", "ngram", "draft"])
@pytest.mark.parametrize("batch", [2, 3, 4])
def test_batched_speculation_equals_each_row_alone(models, plain, kind, batch):
    decoder = make_decoder(*models, batch=batch)
    slots = run_batch(decoder, PROMPTS[:batch], SpecOptions(type=kind, n_max=3))
    for prompt, slot in zip(PROMPTS[:batch], slots, strict=True):
        assert slot.generated == plain[tuple(prompt)]


def test_rows_with_different_strategies_share_a_round(models, plain):
    decoder = make_decoder(*models, batch=4)
    specs = [SpecOptions(type=t, n_max=n) for t, n in [("mtp", 2), ("ngram", 4), ("draft", 3), ("none", 3)]]
    slots = [
        decoder.add(p, n_predict=N_NEW, sampling=GREEDY, spec=s, stop_ids=frozenset())
        for p, s in zip(PROMPTS, specs, strict=True)
    ]
    while decoder.active():
        decoder.step()
    for prompt, slot in zip(PROMPTS, slots, strict=True):
        assert slot.generated == plain[tuple(prompt)]


@pytest.mark.parametrize("kind", ["mtp", "ngram", "draft"])
def test_eos_inside_a_draft_ends_the_output_there(models, plain, kind):
    prompt = PROMPTS[0]
    expected = plain[tuple(prompt)]
    stop = expected[N_NEW // 2]
    cut = expected[: expected.index(stop) + 1]
    decoder = make_decoder(*models, batch=1)
    (slot,) = run_batch(decoder, [prompt], SpecOptions(type=kind, n_max=6), stop_ids=frozenset({stop}))
    assert slot.generated == cut
    assert slot.stop_reason == "eos"


def test_a_draft_model_identical_to_the_target_accepts_every_draft(models):
    decoder = make_decoder(*models, batch=1)
    (slot,) = run_batch(decoder, [PROMPTS[1]], SpecOptions(type="draft", n_max=4))
    assert slot.stats.drafted > 0
    assert slot.stats.accepted == slot.stats.drafted
    assert slot.stats.mean_accepted_length > 3.0


def test_mtp_drafts_are_accepted_sometimes(models):
    """With 16 tokens random drafts hit now and then: the accept path of MTP runs in these tests."""
    decoder = make_decoder(*models, batch=1)
    slots = run_batch(decoder, PROMPTS[:1], SpecOptions(type="mtp", n_max=3))
    for p in PROMPTS[1:]:
        slots += run_batch(decoder, [p], SpecOptions(type="mtp", n_max=3))
    assert sum(s.stats.accepted for s in slots) > 0


def test_p_min_shortens_drafts(models):
    decoder = make_decoder(*models, batch=1)
    drafted = {}
    for p_min in (0.0, 0.3, 1.0):
        (slot,) = run_batch(decoder, [PROMPTS[0]], SpecOptions(type="mtp", n_max=4, p_min=p_min))
        drafted[p_min] = slot.stats.drafted
    assert drafted[0.0] > drafted[0.3] > drafted[1.0] == 0


def test_statistics_are_consistent(models):
    decoder = make_decoder(*models, batch=2)
    for slot in run_batch(decoder, PROMPTS[:2], SpecOptions(type="ngram", n_max=4)):
        st = slot.stats
        assert st.accepted <= st.drafted <= st.rounds * 4
        assert sum(st.accepted_by_position) == st.accepted
        assert sum(st.drafted_by_position) == st.drafted
        assert all(a <= d for a, d in zip(st.accepted_by_position, st.drafted_by_position, strict=True))
        assert st.accepted_by_position == sorted(st.accepted_by_position, reverse=True)
        assert st.mean_accepted_length == pytest.approx(1 + st.accepted / st.rounds)


def test_seeded_sampling_with_speculation_is_reproducible(models):
    sampling = SamplingParams(temperature=0.9, seed=7)
    decoder = make_decoder(*models, batch=1)
    a = run_batch(decoder, [PROMPTS[0]], SpecOptions(type="mtp", n_max=3), sampling=sampling)[0].generated
    b = run_batch(decoder, [PROMPTS[0]], SpecOptions(type="mtp", n_max=3), sampling=sampling)[0].generated
    assert a == b and len(a) == N_NEW


@torch.no_grad()
def test_mtp_drafts_match_transformers_candidate_generator(pair, models):
    from transformers.generation.candidate_generator import SinglePositionMultiTokenCandidateGenerator

    with ref.reference_patches():
        from transformers import AutoModelForCausalLM, Gemma4AssistantForCausalLM

        hf_target = AutoModelForCausalLM.from_pretrained(pair[0], attn_implementation="eager").eval()
        hf_assistant = Gemma4AssistantForCausalLM.from_pretrained(pair[1], attn_implementation="eager").eval()
        prompt = [2, 5, 7, 9, 11, 3]  # within the sliding window: both KV conventions agree
        out = ref.hf_forward(
            hf_target, torch.tensor([prompt]), output_hidden_states=True, return_shared_kv_states=True
        )
        first = int(out.logits[0, -1].argmax())
        hf_assistant.generation_config.num_assistant_tokens = 4
        gen = SinglePositionMultiTokenCandidateGenerator(
            hf_assistant, hf_target.get_input_embeddings(), hf_target.generation_config
        )
        gen.num_assistant_tokens, gen.main_model_max_length = 4, 64
        ids, _ = gen.get_candidates(torch.tensor([prompt + [first]]), {}, out, False, 0)
    expected = ids[0, len(prompt) + 1 :].tolist()

    # our state after the first round of a plain request is the reference's state after prefill:
    # pending token `first`, hidden state at the last prompt position, KV of the prompt
    decoder = make_decoder(*models, batch=1)
    slot = decoder.add(
        prompt, n_predict=8, sampling=GREEDY, spec=SpecOptions(type="none"), stop_ids=frozenset()
    )
    decoder.step()
    assert slot.generated == [first]
    slot.spec = SpecOptions(type="mtp", n_max=4)
    assert decoder._draft([slot])[slot.row].tokens == expected


def test_refuses_an_assistant_for_another_target(pair, reference_models):
    e2b = reference_models.target("e2b")  # vocabulary 256, the assistant was made for 16
    target, config = ref.load_ours(e2b.path)
    assistant, _ = ref.load_ours(pair[1])
    with pytest.raises(ModelFormatError, match="vocabulary mismatch"):
        Engine(target, config, ctx_size=32, stop_ids=frozenset(), drafter=assistant)
    g3, g3_config = ref.load_ours(reference_models.target("gemma3").path)
    with pytest.raises(ModelFormatError, match="mismatch"):
        Engine(g3, g3_config, ctx_size=32, stop_ids=frozenset(), drafter=assistant)


def test_mtp_without_an_assistant_is_a_usage_error(models):
    target, _ = models
    engine = Engine(target, target.config, ctx_size=32, stop_ids=frozenset())
    with pytest.raises(UsageError, match="needs an MTP assistant"):
        engine.generate([2, 3], n_predict=2, spec=SpecOptions(type="mtp"))
    result = engine.generate([2, 3, 4, 2, 3], n_predict=4, spec=SpecOptions(type="ngram"))
    assert result.speculative["type"] == "ngram"
