"""The acceptance rules are lossless: committed tokens follow the target distribution exactly."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from gemma_mtp.sampling import SamplingParams, probs_from_logits
from gemma_mtp.speculative.acceptance import accept_greedy, accept_sampled
from gemma_mtp.speculative.ngram import ngram_lookup
from gemma_mtp.speculative.stats import SpecStats

V = 8
DRAWS = 8_000


def first_token_frequencies(p: torch.Tensor, q: torch.Tensor | None, seed: int) -> torch.Tensor:
    """Draw a one-token draft from q (or the fixed token 0 when q is None), run acceptance, and
    count the first committed token: it must be distributed as p[0]."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V)
    for _ in range(DRAWS):
        draft = int(torch.multinomial(q[0], 1, generator=gen)) if q is not None else 0
        k, nxt = accept_sampled(p, q, [draft], gen)
        counts[draft if k == 1 else nxt] += 1
    return counts


def assert_distributed_as(counts: torch.Tensor, p: torch.Tensor) -> None:
    support = p > 0
    assert counts[~support].sum() == 0, "a token with zero target probability was committed"
    expected = p[support] * counts.sum()
    assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
        SamplingParams(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0),
        SamplingParams(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
        SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.1),
        SamplingParams(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05),
    ],
    ids=["plain", "top_k", "top_p", "min_p", "all"],
)
def test_rejection_sampling_reproduces_the_target_distribution(params):
    torch.manual_seed(0)
    target_logits, draft_logits = torch.randn(2, V) * 1.5, torch.randn(1, V) * 1.5
    p = probs_from_logits(target_logits, params)
    q = probs_from_logits(draft_logits, params)
    assert_distributed_as(first_token_frequencies(p, q, seed=1), p[0])


def test_a_deterministic_drafter_is_lossless_too():
    torch.manual_seed(3)
    p = probs_from_logits(torch.randn(2, V), SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    assert_distributed_as(first_token_frequencies(p, None, seed=2), p[0])


def test_bonus_token_follows_the_last_target_distribution_when_all_drafts_are_kept():
    p = torch.zeros(3, V)
    p[0, 2] = p[1, 5] = 1.0
    p[2] = torch.full((V,), 1 / V)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(V)
    for _ in range(4000):
        k, nxt = accept_sampled(p, None, [2, 5], gen)
        assert k == 2
        counts[nxt] += 1
    assert_distributed_as(counts, p[2])


def test_greedy_acceptance_stops_at_the_first_mismatch():
    logits = torch.tensor([[0.0, 9.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert accept_greedy(logits, [1, 0]) == (2, 2)
    assert accept_greedy(logits, [1, 2]) == (1, 0)
    assert accept_greedy(logits, [0, 0]) == (0, 1)
    assert accept_greedy(logits[:1], []) == (0, 1)


def test_ngram_lookup_proposes_the_latest_continuation():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 4, 1, 2, 3]
    assert ngram_lookup(tokens, 3, ngram_max=3, ngram_min=1) == [7, 8, 4]
    assert ngram_lookup(tokens, 1, ngram_max=3, ngram_min=1) == [7]
    assert ngram_lookup([5, 6, 7], 3, ngram_max=3, ngram_min=1) == []


def test_statistics_add_up():
    stats = SpecStats(type="mtp", n_max=3)
    for drafted, accepted in [(3, 3), (3, 1), (2, 0), (0, 0), (3, 2)]:
        stats.record(drafted, accepted)
    assert (stats.rounds, stats.drafted, stats.accepted) == (4, 11, 6)
    assert stats.accepted_by_position == [3, 2, 1]
    assert stats.drafted_by_position == [4, 4, 3]
    assert all(a <= d for a, d in zip(stats.accepted_by_position, stats.drafted_by_position, strict=True))
    assert stats.mean_accepted_length == pytest.approx(1 + 6 / 4)
    total = SpecStats(type="mtp")
    total.merge(stats)
    total.merge(stats)
    assert (total.drafted, total.accepted_by_position) == (22, [6, 4, 2])
