"""MoE expert stacks kept as GGUF blocks for our native kernel on the CPU (kind "gguf").

`GGUFBlockExperts` is `torch_blocks.TorchBlockExperts` (the file's 3-D tensor, `data` uint8
`[E, N, bytes_per_row]`, a view of the memory map) whose `linear(x, e)` multiplies by expert e's
rows with `native.gguf_mm` (the rows are a 2-D view with contiguous rows: nothing is copied). So
a MoE target on the CPU takes its file's size in memory, where the expert stacks used to be
dequantized to float (a 26B-A4B file of 16 GB did not fit in 24 GB), and each token's product is
the one `gguf_mm` gives it alone: a verify forward's rows are the one-position forwards' bits.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType

from .. import native
from .blocks import gguf_kernel_ok
from .torch_blocks import TorchBlockExperts

__all__ = ["GGUFBlockExperts", "native_experts_ok"]


def native_experts_ok(qtype: GGMLQuantizationType, in_features: int) -> bool:
    """Whether an expert stack of `qtype` with `in_features` inputs can stay blocks for the native
    kernel (a type it reads, and a torch decoder for `dequantize`)."""
    from .torch_blocks import torch_kernel_ok

    return (
        native.module() is not None
        and gguf_kernel_ok(qtype, in_features)
        and torch_kernel_ok(qtype, in_features)
    )


class GGUFBlockExperts(TorchBlockExperts):
    kind = "gguf"

    def linear(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """x `[M, K]` -> `[M, N]` in x's dtype: x times expert `expert`'s matrix transposed."""
        out = native.module().gguf_mm(x, [self.data[expert]], [int(self.qtype)])
        return out if out.dtype == x.dtype else out.to(x.dtype)
