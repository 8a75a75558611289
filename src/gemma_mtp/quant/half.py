"""A GGUF file's BF16 / F16 matrices kept as stored, multiplied by our native kernel: kind "half".

Gemma 4's `per_layer_model_proj` (E2B: 1536 -> 8,960, 26 MiB in BF16) is stored in BF16 by
llama.cpp's converter and quantizer. Widened to a float32 copy it cost twice the memory and, through
torch's float32 GEMM, ~4 ms a decode step and ~10 ms a 4-position verify on this CPU; the native
kernel reads the 2-byte weights in place (`native/csrc/half_mm.cpp`), exact weights and float32
products, and gives a row the same bits whatever else is in the batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from .. import native

__all__ = ["HalfWeight", "HALF_TYPES", "half_kernel_ok"]

HALF_TYPES = {GGMLQuantizationType.BF16: torch.bfloat16, GGMLQuantizationType.F16: torch.float16}


def half_kernel_ok(qtype: GGMLQuantizationType) -> bool:
    return qtype in HALF_TYPES and native.module() is not None and hasattr(native.module(), "half_mm")


class HalfWeight(nn.Module):
    """`data` bfloat16 / float16 `[N, K]`, viewing the file's bytes (nothing here writes to it)."""

    kind = "half"

    def __init__(self, data: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("data", data)
        self.out_features, self.in_features = data.shape
        self.max_error = 0.0

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType) -> HalfWeight:
        """`data`: the tensor's bytes as gguf-py maps them, `[N, K]` 2-byte values (or bytes)."""
        raw = np.ascontiguousarray(data).view(np.uint16) if data.dtype == np.uint8 else data.view(np.uint16)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            bits = torch.from_numpy(raw.reshape(data.shape[0], -1))
        return cls(bits.view(HALF_TYPES[qtype]))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` (any float dtype) -> `[M, N]` float32."""
        return native.module().half_mm(x, self.data)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.data[ids.to(device="cpu", dtype=torch.long)].float()

    def dequantize(self) -> torch.Tensor:
        return self.data.float()

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()
