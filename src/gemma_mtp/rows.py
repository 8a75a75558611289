"""Ragged rows into one forward's ``tokens``/``positions``: the one packer the engine, the draft model
and the trainer share.

Position -1 marks padding (the KV cache writes nothing there and attends to nothing from it), so
rows of different lengths, each at its own position, go through one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pack_rows"]


def pack_rows(
    feeds: Sequence[Sequence[int]],
    starts: Sequence[int],
    *,
    left: bool = False,
    batch: int | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` [B, W] (0 where padded) and ``positions`` [B, W] (-1 where padded) for ``feeds``,
    feed i starting at position ``starts[i]``; W is the longest feed. ``left`` pads on the left (the
    last token of every row in the last column). ``batch``/``rows``: place feed i in row
    ``rows[i]`` of a ``batch``-row forward (rows without a feed are all padding)."""
    width = max((len(f) for f in feeds), default=0)
    n = batch if batch is not None else len(feeds)
    tokens = torch.zeros(n, width, dtype=torch.long)
    positions = torch.full((n, width), -1, dtype=torch.long)
    for i, (feed, start) in enumerate(zip(feeds, starts, strict=True)):
        row = rows[i] if rows is not None else i
        cols = slice(width - len(feed), width) if left else slice(0, len(feed))
        tokens[row, cols] = torch.tensor(list(feed), dtype=torch.long)
        positions[row, cols] = torch.arange(start, start + len(feed))
    return tokens, positions
