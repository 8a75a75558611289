"""`rows.pack_rows`: ragged feeds into one forward's tokens and positions (-1 = padding)."""

from __future__ import annotations

import torch

from gemma_mtp.rows import pack_rows


def test_right_padding_each_row_at_its_own_position():
    tokens, positions = pack_rows([[5, 6, 7], [9]], [10, 3])
    assert tokens.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert positions.tolist() == [[10, 11, 12], [3, -1, -1]]


def test_left_padding_puts_every_last_token_in_the_last_column():
    tokens, positions = pack_rows([[1, 2], [3, 4, 5]], [0, 0], left=True)
    assert tokens.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert positions.tolist() == [[-1, 0, 1], [0, 1, 2]]


def test_feeds_placed_in_given_rows_of_a_larger_batch():
    tokens, positions = pack_rows([[8, 9]], [4], batch=3, rows=[2])
    assert torch.equal(tokens, torch.tensor([[0, 0], [0, 0], [8, 9]]))
    assert positions.tolist() == [[-1, -1], [-1, -1], [4, 5]]
