"""Greedy acceptance on the device (`engine.graph_decoder.accept_greedy_on_device`) against the
reference rule, `speculative.acceptance.accept_greedy`, row by row, on random verify logits.

Cases: drafts that follow the argmax for a random number of positions and then differ, rows that
drafted fewer tokens (padded with -1), and logits with ties (few distinct values: the first
index of the maximum wins, as torch.argmax and the native argmax both say) and NaNs.
"""

from __future__ import annotations

import pytest
import torch

from gemma_mtp.engine.graph_decoder import accept_greedy_on_device, committed_tokens
from gemma_mtp.engine.graphs import capture_hazards
from gemma_mtp.speculative.acceptance import accept_greedy


def _case(gen: torch.Generator, rows: int, width: int, vocab: int, levels: int | None, nan: bool):
    logits = torch.randn(rows, width, vocab, generator=gen)
    if levels is not None:  # ties: few distinct values
        logits = torch.randint(0, levels, (rows, width, vocab), generator=gen).float()
    if nan:
        mask = torch.rand(rows, width, vocab, generator=gen) < 0.01
        logits = logits.masked_fill(mask, float("nan"))
    best = logits.argmax(-1)
    n_drafts = torch.randint(0, width, (rows,), generator=gen)
    drafts = torch.full((rows, width - 1), -1, dtype=torch.long)
    for r in range(rows):
        follow = int(torch.randint(0, int(n_drafts[r]) + 1, (1,), generator=gen))
        for i in range(int(n_drafts[r])):
            if i < follow:
                drafts[r, i] = best[r, i]
            else:  # any token, the argmax included now and then
                drafts[r, i] = int(torch.randint(0, vocab, (1,), generator=gen))
    return logits, drafts, n_drafts


@pytest.mark.parametrize("levels", [None, 2, 3], ids=["distinct", "ties2", "ties3"])
@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
def test_device_acceptance_is_accept_greedy_row_by_row(levels, nan):
    gen = torch.Generator().manual_seed(10 * (levels or 0) + nan)
    cases = 0
    for _ in range(60):
        rows, width = (
            int(torch.randint(1, 5, (1,), generator=gen)),
            int(torch.randint(1, 7, (1,), generator=gen)),
        )
        vocab = int(torch.randint(2, 40, (1,), generator=gen))
        logits, drafts, n_drafts = _case(gen, rows, width, vocab, levels, nan)
        n_accepted, next_token = accept_greedy_on_device(logits, drafts)
        committed = committed_tokens(drafts, n_accepted, next_token)
        for r in range(rows):
            n = int(n_drafts[r])
            want_k, want_next = accept_greedy(logits[r, : n + 1], drafts[r, :n].tolist())
            assert (int(n_accepted[r]), int(next_token[r])) == (want_k, want_next)
            want_tokens = [*drafts[r, :want_k].tolist(), want_next]
            assert committed[r].tolist() == want_tokens + [-1] * (width - len(want_tokens))
            cases += 1
    assert cases > 100


def test_full_acceptance_takes_the_bonus_token():
    logits = torch.zeros(1, 4, 10)
    logits[0, torch.arange(4), torch.tensor([3, 1, 4, 1])] = 1.0
    n_accepted, next_token = accept_greedy_on_device(logits, torch.tensor([[3, 1, 4]]))
    assert n_accepted.tolist() == [3] and next_token.tolist() == [1]


def test_no_draft_is_plain_greedy():
    logits = torch.randn(3, 1, 17, generator=torch.Generator().manual_seed(0))
    n_accepted, next_token = accept_greedy_on_device(logits, torch.empty(3, 0, dtype=torch.long))
    assert n_accepted.tolist() == [0, 0, 0] and next_token.tolist() == logits[:, 0].argmax(-1).tolist()


def test_device_acceptance_reads_nothing_back_and_keeps_the_device():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))
    drafts = torch.tensor([[1, 2], [3, -1]])
    with capture_hazards() as found:
        n_accepted, next_token = accept_greedy_on_device(logits, drafts)
        committed_tokens(drafts, n_accepted, next_token)
    assert found == []
    assert n_accepted.dtype == next_token.dtype == torch.long
    assert n_accepted.device == next_token.device == logits.device
