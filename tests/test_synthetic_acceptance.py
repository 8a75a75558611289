"""Synthetic acceptance (benchmarking only) means what llama.cpp's --spec-synth-rates means, the
statistics report the imposed rates, nothing changes when it is off, and no user surface sets it.

Tolerances are binomial: a rate P measured over N independent trials is within
Z * sqrt(P (1 - P) / N) of P; the seeds are fixed, so every run draws the same decisions.
"""

from __future__ import annotations

import json
import math

import hf_reference as ref
import pytest
import torch

from gemma_mtp.cli.main import build_parser
from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.errors import UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.server.schemas import CompletionRequest, RequestError, parse_request
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.speculative.mtp import MTPDrafter
from gemma_mtp.speculative.synthetic import SyntheticAcceptance, SyntheticAcceptor, from_length

GREEDY = SamplingParams(temperature=0)
RATES = (0.89, 0.83, 0.74, 0.64)  # the ik_llama.cpp 31B measurement of issue 21
Z = 4.5  # binomial tolerance in standard deviations


def within_binomial(observed: int, trials: int, p: float) -> bool:
    return abs(observed / trials - p) <= Z * math.sqrt(p * (1 - p) / trials) + 1e-12


def test_rates_follow_llama_cpp_rules() -> None:
    with pytest.raises(UsageError, match="non-increasing"):
        SyntheticAcceptance(rates=(0.5, 0.6))
    with pytest.raises(UsageError, match="within"):
        SyntheticAcceptance(rates=(1.5,))
    with pytest.raises(UsageError, match="within"):
        SyntheticAcceptance(rates=(float("nan"),))
    with pytest.raises(UsageError, match="at least one"):
        SyntheticAcceptance(rates=())


def test_conditional_probabilities_are_ratios_of_the_unconditional_rates() -> None:
    spec = SyntheticAcceptance(rates=(0.8, 0.4, 0.0, 0.0))
    assert spec.conditional == pytest.approx((0.8, 0.5, 0.0, 0.0))
    assert spec.mean_length == pytest.approx(2.2)


def test_from_length_gives_geometric_rates_of_that_mean_length() -> None:
    spec = from_length(2.5, 4)
    p = spec.rates[0]
    assert spec.rates == pytest.approx(tuple(p**j for j in range(1, 5)))
    assert spec.mean_length == pytest.approx(2.5)
    assert from_length(5.0, 4).rates == (1.0, 1.0, 1.0, 1.0)
    assert from_length(1.0, 4).rates == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(UsageError):
        from_length(6.0, 4)


def test_spec_options_need_a_rate_per_draft_position_and_a_strategy() -> None:
    with pytest.raises(UsageError, match="4 rates for n_max 5"):
        SpecOptions(type="mtp", n_max=5, synthetic=SyntheticAcceptance(rates=RATES))
    with pytest.raises(UsageError, match="needs a speculative type"):
        SpecOptions(type="none", synthetic=SyntheticAcceptance(rates=RATES))
    assert SpecOptions(type="mtp", n_max=2, synthetic=SyntheticAcceptance(rates=RATES)).n_max == 2


def test_acceptor_imposes_the_unconditional_rates() -> None:
    acceptor = SyntheticAcceptor(SyntheticAcceptance(rates=RATES, seed=3))
    logits = torch.randn(len(RATES) + 1, 32, generator=torch.Generator().manual_seed(0))
    drafts = [5, 6, 7, 8]
    n_rounds, kept = 20_000, [0] * len(RATES)
    for _ in range(n_rounds):
        k, _ = acceptor.accept(logits, drafts, GREEDY, None, frozenset())
        for i in range(k):
            kept[i] += 1
    for i, p in enumerate(RATES):
        assert within_binomial(kept[i], n_rounds, p), (i, kept[i] / n_rounds, p)


def test_the_committed_token_is_the_targets_choice_where_acceptance_stops() -> None:
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    best = logits.argmax(-1).tolist()
    all_kept = SyntheticAcceptor(SyntheticAcceptance(rates=(1.0, 1.0, 1.0)))
    assert all_kept.accept(logits, [9, 10, 11], GREEDY, None, frozenset()) == (3, best[3])
    none_kept = SyntheticAcceptor(SyntheticAcceptance(rates=(0.0, 0.0, 0.0)))
    assert none_kept.accept(logits, [9, 10, 11], GREEDY, None, frozenset()) == (0, best[0])


def test_a_drafted_end_of_generation_token_is_never_kept() -> None:
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    acceptor = SyntheticAcceptor(SyntheticAcceptance(rates=(1.0, 1.0, 1.0)))
    k, nxt = acceptor.accept(logits, [9, 1, 11], GREEDY, None, frozenset({1}))
    assert (k, nxt) == (1, int(logits[1].argmax()))


# ------------------------------------------------------------------------------------- in the engine


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_pair")
    text = ref.gemma4_text_kwargs(
        vocab_size=16,
        layer_types=[ref.S, ref.S, ref.F, ref.S, ref.S, ref.F],
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=16,
    )
    target = ref._gemma4(root / "target", 11, text, False)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return ref.load_ours(target.path)[0], ref.load_ours(assistant.path)[0]


def generate(models, spec: SpecOptions, n_new: int, prompt=(2, 5, 7, 9, 11, 3)):
    target, assistant = models
    decoder = BatchDecoder(target, max_batch=1, ctx_size=n_new + 32)
    decoder.drafters = {"mtp": MTPDrafter(target, assistant, decoder.cache)}
    slot = decoder.add(list(prompt), n_predict=n_new, sampling=GREEDY, spec=spec, stop_ids=frozenset())
    while decoder.active():
        decoder.step()
    decoder.release(slot)
    return slot


def test_engine_statistics_report_the_imposed_rates(models) -> None:
    spec = SpecOptions(type="mtp", n_max=4, synthetic=SyntheticAcceptance(rates=RATES, seed=7))
    stats = generate(models, spec, 400).stats
    assert stats.rounds > 60
    for i, p in enumerate(RATES):
        drafted, kept = stats.drafted_by_position[i], stats.accepted_by_position[i]
        assert within_binomial(kept, drafted, p), (i, kept, drafted, p)
    report = stats.to_dict()
    assert report["synthetic_acceptance"] == list(RATES)
    assert report["text_valid"] is False


def test_synthetic_runs_repeat_with_the_same_seed(models) -> None:
    spec = SpecOptions(type="mtp", n_max=3, synthetic=SyntheticAcceptance(rates=RATES[:3], seed=1))
    assert generate(models, spec, 40).generated == generate(models, spec, 40).generated


def test_off_nothing_changes_greedy_stays_lossless(models) -> None:
    plain = generate(models, SpecOptions(type="none"), 30)
    mtp = generate(models, SpecOptions(type="mtp", n_max=3), 30)
    assert mtp.generated == plain.generated
    assert mtp.synthetic is None
    assert "synthetic_acceptance" not in mtp.stats.to_dict()
    assert "text_valid" not in mtp.stats.to_dict()


# ------------------------------------------------------------------------------------- no user surface


@pytest.mark.parametrize("command", ["run", "chat", "serve"])
def test_no_command_line_flag_sets_it(command) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--spec-synth-rates", "0.9,0.8"])
    assert exc.value.code == 2


@pytest.mark.parametrize("key", ["synthetic", "synthetic_acceptance", "synth_rates", "spec_synth_rates"])
def test_the_server_refuses_it_in_a_request(key) -> None:
    body = {"prompt": "hi", "speculative": {"type": "mtp", key: [0.9, 0.8]}}
    with pytest.raises(RequestError, match=key):
        parse_request(json.dumps(body).encode(), CompletionRequest)
