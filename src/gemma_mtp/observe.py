"""Watching the inputs of the models' matrix products (what an importance matrix accumulates).

The model code multiplies through a few modules: `models.common.Linear` (float weights),
`quant.QuantLinear` (a quantized weight), `quant.fuse.FusedLinear` (q/k/v or gate/up in one call)
and `models.moe.Experts` (one matrix per expert). Each calls `OBSERVER(module, x, expert)` before
its product when an observer is installed; the observer (`calibrate.imatrix`) knows which GGUF
tensor each module holds. Off, a site costs one test of a module global. While observing,
`models.native_blocks` runs layers on the modules' path, whose results are the native ones bit for
bit, so that no product escapes. One observer at a time, for the whole process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["OBSERVER", "Observer", "observing", "active"]

# observer(module or expert stack, x [..., K] the product's input, expert index or None)
Observer = Callable[[object, torch.Tensor, int | None], None]
OBSERVER: Observer | None = None


def active() -> bool:
    return OBSERVER is not None


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Call ``observer`` with the input of every matrix product inside the block."""
    global OBSERVER
    if OBSERVER is not None:
        raise RuntimeError("an observer is already installed; observations do not nest")
    OBSERVER = observer
    try:
        yield
    finally:
        OBSERVER = None
