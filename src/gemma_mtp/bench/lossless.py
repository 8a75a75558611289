"""Lossless under sampling, checked on the benched pair (`bench --check-lossless [DRAWS]`).

The suite's test (tests/test_acceptance.py) draws a draft, runs the acceptance rule and checks that
the first committed token is distributed as the target's p. Here the same property is checked end
to end on the real engines, where p is not at hand: for DRAWS seeds, plain decoding and speculative
decoding each commit their first two tokens of the same prompt at the same temperature (the first
token is the rejection sampler's output on round one's drafts, the second either the bonus token or
the next round's), and a chi-square test of homogeneity compares the two samples at each position.
Fixed seeds make the check reproducible; the p-value is the smaller of the two, Bonferroni-corrected.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["ALPHA", "chi2_homogeneity", "check_lossless_sampling"]

ALPHA = 1e-3  # the suite's threshold
_MIN_EXPECTED = 5.0  # categories expected less often are pooled (the chi-square approximation needs it)


def chi2_homogeneity(a: Counter, b: Counter) -> tuple[float, int]:
    """(p-value, degrees of freedom) of "a and b are draws from one distribution": a 2 x K table over
    the tokens seen, rare tokens pooled into one category. p = 1 with fewer than two categories."""
    import torch

    n_a, n_b = sum(a.values()), sum(b.values())
    total = n_a + n_b
    if not n_a or not n_b:
        return 1.0, 0
    keys = sorted(set(a) | set(b))
    common = [k for k in keys if (a[k] + b[k]) * min(n_a, n_b) / total >= _MIN_EXPECTED]
    rare = [k for k in keys if k not in common]
    rows = [(a[k], b[k]) for k in common]
    if rare:
        rows.append((sum(a[k] for k in rare), sum(b[k] for k in rare)))
    if len(rows) < 2:
        return 1.0, 0
    stat = 0.0
    for x, y in rows:
        column = x + y
        for observed, n in ((x, n_a), (y, n_b)):
            expected = column * n / total
            stat += (observed - expected) ** 2 / expected
    dof = len(rows) - 1
    p = float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
        )
    )
    return p, dof


def check_lossless_sampling(
    plain_engine: Any,
    spec_engine: Any,
    prompt_ids: Sequence[int],
    *,
    sampling: Any,
    spec: Any,
    draws: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The first two committed tokens of `draws` seeded generations, plain vs speculative, compared
    position by position; a row's `lossless_sampling` field."""
    from ..speculative.options import SpecOptions

    samples: list[list[Counter]] = [[Counter(), Counter()], [Counter(), Counter()]]  # [engine][position]
    for i in range(draws):
        params = dataclasses.replace(sampling, seed=seed + i)
        for which, (engine, options) in enumerate(((plain_engine, SpecOptions()), (spec_engine, spec))):
            tokens = engine.generate(list(prompt_ids), n_predict=2, sampling=params, spec=options).token_ids
            for position, token in enumerate(tokens[:2]):
                samples[which][position][token] += 1
    tests = [chi2_homogeneity(samples[0][pos], samples[1][pos]) for pos in range(2)]
    pvalue = min(1.0, 2 * min(p for p, _ in tests))
    return {
        "draws": draws,
        "pvalue": pvalue,
        "pvalues_by_position": [p for p, _ in tests],
        "categories_by_position": [dof + 1 for _, dof in tests],
        "passed": pvalue > ALPHA,
        "n_max": spec.n_max,
        "temperature": sampling.temperature,
    }
