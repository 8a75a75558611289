"""SamplingParams validation, the filter chain of probs_from_logits, and sample()."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gemma_mtp.errors import UsageError
from gemma_mtp.sampling import SamplingParams, make_generator, probs_from_logits, sample

OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # every filter disabled


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


def expected(kept: list[float], vocab: int, temperature: float = 1.0) -> torch.Tensor:
    """Renormalized ``kept[i] ** (1 / T)`` on the first len(kept) ids, 0 elsewhere."""
    weights = torch.tensor(kept, dtype=torch.float64) ** (1.0 / temperature)
    out = torch.zeros(vocab, dtype=torch.float64)
    out[: len(kept)] = weights / weights.sum()
    return out.float()


def test_defaults_are_llama_cpp_defaults():
    params = SamplingParams()
    assert (params.temperature, params.top_k, params.top_p, params.min_p, params.seed) == (
        0.8,
        40,
        0.95,
        0.05,
        None,
    )


def test_params_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().top_k = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingParams(0.5)  # type: ignore[misc]


@pytest.mark.parametrize("temperature, greedy", [(0.0, True), (-1.0, True), (1e-6, False), (0.8, False)])
def test_greedy_means_temperature_at_most_zero(temperature, greedy):
    assert SamplingParams(temperature=temperature).greedy is greedy


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", "hot"),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", -0.1),
        ("top_p", 1.5),
        ("min_p", -0.01),
        ("min_p", 2.0),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.5),
    ],
)
def test_bad_parameter_raises_usage_error_naming_it(field, value):
    with pytest.raises(UsageError, match=rf"^{field} must be"):
        SamplingParams(**{field: value})


def test_greedy_is_one_hot_argmax():
    logits = torch.randn(5, 17, generator=torch.Generator().manual_seed(0))
    probs = probs_from_logits(logits, SamplingParams(temperature=0.0))
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 17).float())


def test_greedy_ties_go_to_lowest_index():
    probs = probs_from_logits(torch.tensor([1.0, 3.0, 3.0, 0.0]), SamplingParams(temperature=0.0))
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_no_filters_is_softmax_at_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    probs = probs_from_logits(logits, SamplingParams(temperature=0.5, **OFF))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))


def test_top_k_keeps_k_most_likely():
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, **{**OFF, "top_k": 2}))
    torch.testing.assert_close(probs, torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))


def test_top_k_ties_keep_lowest_indices():
    logits = torch.tensor([0.0, 1.0, 1.0, 1.0])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, **{**OFF, "top_k": 2}))
    torch.testing.assert_close(probs, torch.tensor([0.0, 0.5, 0.5, 0.0]))


def test_top_k_larger_than_vocab_is_off():
    logits = logits_of([0.5, 0.3, 0.2])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, **{**OFF, "top_k": 10}))
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.0, [0.5]),  # at least one token survives
        (0.45, [0.5]),
        (0.7, [0.5, 0.3]),  # smallest prefix with cumulative mass >= top_p
        (0.85, [0.5, 0.3, 0.15]),
        (0.99, [0.5, 0.3, 0.15, 0.05]),
    ],
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, kept):
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, **{**OFF, "top_p": top_p}))
    torch.testing.assert_close(probs, expected(kept, 4))


@pytest.mark.parametrize(
    "min_p, kept",
    [
        (0.2, [0.5, 0.3, 0.15]),  # drops p < 0.2 * 0.5 = 0.1
        (0.5, [0.5, 0.3]),  # drops p < 0.25
        (1.0, [0.5]),
    ],
)
def test_min_p_drops_tokens_below_fraction_of_max(min_p, kept):
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, **{**OFF, "min_p": min_p}))
    torch.testing.assert_close(probs, expected(kept, 4))


def test_top_p_sees_probabilities_renormalized_after_top_k():
    # After top_k=2 the mass is [4/7, 3/7]; 4/7 >= 0.5 so top_p keeps one token.
    # Measured on the full distribution (0.4 < 0.5) it would keep two.
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    params = SamplingParams(temperature=1.0, top_k=2, top_p=0.5, min_p=0.0)
    assert probs_from_logits(logits, params).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_filters_run_before_temperature():
    # At T=2 the last token's ratio to the max would be sqrt(0.1) > 0.2; filtering at T=1 drops it.
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    probs = probs_from_logits(logits, SamplingParams(temperature=2.0, **{**OFF, "min_p": 0.2}))
    torch.testing.assert_close(probs, expected([0.5, 0.3, 0.15], 4, temperature=2.0))


def test_full_default_chain_on_small_vocab():
    # top_k=3 -> [0.5, 0.3, 0.15] renormalized; top_p=0.9 keeps all three (0.842 < 0.9);
    # min_p=0.35 drops 0.15 (< 0.175); temperature 0.5 squares the survivors.
    logits = logits_of([0.05, 0.5, 0.15, 0.3])
    params = SamplingParams(temperature=0.5, top_k=3, top_p=0.9, min_p=0.35)
    torch.testing.assert_close(probs_from_logits(logits, params), torch.tensor([0.0, 25 / 34, 0.0, 9 / 34]))


def test_batched_rows_match_single_rows():
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(1)) * 3
    params = SamplingParams()
    probs = probs_from_logits(logits, params)
    assert probs.shape == (2, 3, 50) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(probs[i, j], probs_from_logits(logits[i, j], params))


def test_low_precision_logits_give_float32_probs():
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for params in (SamplingParams(), SamplingParams(temperature=0.0)):
        assert probs_from_logits(logits, params).dtype == torch.float32


def test_sample_shapes():
    probs = torch.full((2, 3, 8), 1 / 8)
    generator = make_generator(0)
    ids = sample(probs, generator)
    assert ids.shape == (2, 3) and ids.dtype == torch.long
    assert sample(probs[0, 0], generator).shape == ()


def test_sample_greedy_flag_takes_argmax():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert sample(probs, greedy=True).tolist() == [1, 0]


def test_sample_never_draws_zero_probability_tokens():
    probs = probs_from_logits(logits_of([0.5, 0.3, 0.15, 0.05]), SamplingParams(temperature=1.0, top_k=2))
    ids = sample(probs.expand(2000, 4), make_generator(3))
    assert set(ids.tolist()) <= {0, 1}


def test_same_seed_same_draws():
    probs = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(4)), dim=-1)
    assert torch.equal(sample(probs, make_generator(7)), sample(probs, make_generator(7)))


def test_sample_frequencies_match_probs():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0, 0.9, 1.2])
    probs = probs_from_logits(logits, SamplingParams(temperature=0.9, top_k=6, top_p=0.97, min_p=0.05))
    n_draws = 200_000
    ids = sample(probs.expand(n_draws, -1), make_generator(1234))
    counts = torch.bincount(ids, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0
    kept = probs.double()[support]
    expected_counts = kept / kept.sum() * n_draws  # float32 probabilities sum to 1 within ~1e-7
    try:
        from scipy.stats import chisquare
    except ImportError:
        # Without scipy: every bin within 5 standard deviations of its expected count.
        sigma = (expected_counts * (1 - probs.double()[support])).sqrt()
        assert ((counts[support] - expected_counts).abs() <= 5 * sigma).all()
    else:
        assert chisquare(counts[support].numpy(), expected_counts.numpy()).pvalue > 1e-4


@pytest.mark.parametrize("top_k", [1, 7, 40, 999])
def test_top_k_without_a_full_sort_equals_the_full_stable_sort_ties_included(top_k):
    """`probs_from_logits` takes the top k of a stable descending sort without sorting the whole
    vocabulary; on integer logits (ties everywhere, at the k-th value too) it keeps exactly the
    tokens the full sort keeps, with the same probabilities."""
    import math

    from gemma_mtp.sampling import probs_from_logits

    def full_sort(logits, params):
        values, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        keep = torch.ones_like(values, dtype=torch.bool)
        keep[..., params.top_k :] = False
        p = torch.softmax(values.masked_fill(~keep, -math.inf), dim=-1)
        before = torch.nn.functional.pad(torch.cumsum(p, dim=-1)[..., :-1], (1, 0))
        keep &= before < params.top_p
        keep[..., 0] = True
        keep &= torch.exp(values - values[..., :1]) >= params.min_p
        scaled = (values / params.temperature).masked_fill(~keep, -math.inf)
        return torch.zeros_like(scaled).scatter_(-1, order, torch.softmax(scaled, -1))

    generator = torch.Generator().manual_seed(top_k)
    logits = torch.randint(-6, 6, (4, 1000), generator=generator).float()
    params = SamplingParams(temperature=0.7, top_k=top_k, top_p=0.9, min_p=0.01)
    got, want = probs_from_logits(logits, params), full_sort(logits, params)
    assert torch.equal(got > 0, want > 0)
    assert torch.allclose(got, want, rtol=0, atol=1e-7)
