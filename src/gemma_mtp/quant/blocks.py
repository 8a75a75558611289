"""GGUF quant blocks read in place by our native kernel (`native/csrc/gguf_mm.cpp`): kind "gguf".

The weight is the file's bytes, `data` uint8 `[N, bytes_per_row]`, normally a view of the
memory-mapped file (no copy: the model takes the file's size in memory, the pages are shared with
the page cache, and loading is instant). The kernel decodes each block as ggml lays it out
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and the low-bit Q2_K, Q3_K, IQ4_NL, IQ4_XS,
IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M), exactly what `gguf.quants.dequantize` gives,
and multiplies by activations rounded to int8 per 32 inputs (per 256 for Q4_K / Q5_K / Q6_K,
summed per super-block in int32), as llama.cpp does. Over many rows (prefill) a tile of
super-block weight rows is decoded once for all of them; each row's result is
still the bits it gets alone, so prefill, decoding and verifying drafts agree. `GGUFMultiWeight`
runs several matrices that read the same input (q/k/v, gate/up) in one call, still in place.

The loader repacks the Q4_K and Q5_0 matrices of linear layers 8 rows at a time (`repack()`,
`native/csrc/gguf_x8.h`; the file's pages are then released, so memory stays the file's size).
Tables whose rows are read (embeddings, the tied head and its candidates) keep the file layout.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import warnings

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from .. import native
from .policy import LOWBIT_TYPES

__all__ = [
    "BlockBytes",
    "GGUFBlockWeight",
    "GGUFMultiWeight",
    "BLOCK_TYPES",
    "Q4_K_X8",
    "Q5_0_X8",
    "REPACK_ENV",
    "gguf_kernel_ok",
    "repack_ok",
    "release_pages",
    "as_tensor",
]

Q = GGMLQuantizationType
BLOCK_TYPES = frozenset({Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, *LOWBIT_TYPES})


X8 = 1000  # gguf_mm's type code of a repacked matrix: X8 + its GGUF type (gguf_x8.h)
Q4_K_X8, Q5_0_X8 = X8 + int(Q.Q4_K), X8 + int(Q.Q5_0)
REPACK_TYPES = frozenset({Q.Q4_K, Q.Q5_0})  # Q6_K in the same scheme measured slower (gguf_x8.h)
REPACK_ENV = "GEMMA_MTP_REPACK"  # "0": keep every matrix in the file's layout


def gguf_kernel_ok(qtype: GGMLQuantizationType, in_features: int) -> bool:
    return qtype in BLOCK_TYPES and in_features % GGML_QUANT_SIZES[qtype][0] == 0


def repack_ok(qtype: GGMLQuantizationType, out_features: int) -> bool:
    """Whether a matrix gets the 8-row layout: Q4_K or Q5_0, rows a multiple of 8, the native
    module built, and not turned off with GEMMA_MTP_REPACK=0."""
    return (
        qtype in REPACK_TYPES
        and out_features % 8 == 0
        and os.environ.get(REPACK_ENV, "1") != "0"
        and native.module() is not None
    )


def release_pages(array: np.ndarray) -> bool:
    """Drop the pages of an array that views a read-only file map from this process's resident
    set (the page cache keeps them; a later read faults them back in). Once a matrix is repacked
    its file blocks are read only for rows, saving or dequantizing. Anything else (memory of our
    own, a writable map, where MADV_DONTNEED would discard data) is left alone: False."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(base, np.memmap):
            base = getattr(base, "_mmap", None)
        else:
            base = getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED") or array.nbytes == 0:
        return False
    if getattr(array, "flags", None) is not None and array.flags.writeable:
        return False
    page = mmap.PAGESIZE
    start = array.__array_interface__["data"][0]
    first, last = -(-start // page) * page, (start + array.nbytes) // page * page
    if last <= first:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED) == 0


def as_tensor(data: np.ndarray) -> torch.Tensor:
    """A uint8 tensor over `data` without copying it (a read-only memory map included: nothing
    here ever writes to a weight)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(data.view(np.uint8))


class BlockBytes(nn.Module):
    """A matrix held as its GGUF blocks, `data` uint8 `[N, bytes_per_row]`: what every kernel over
    raw blocks (this module's native one, `torch_blocks`' portable one) is built on."""

    def __init__(self, data: torch.Tensor, qtype: GGMLQuantizationType, in_features: int) -> None:
        super().__init__()
        block, size = GGML_QUANT_SIZES[qtype]
        if data.dim() != 2 or data.dtype != torch.uint8 or data.shape[1] != in_features // block * size:
            raise ValueError(
                f"{qtype.name}: {in_features} inputs take {in_features // block * size} bytes per row"
            )
        self.register_buffer("data", data)
        self.qtype = qtype
        self.out_features, self.in_features = data.shape[0], in_features
        self.max_error = 0.0  # the weights are the file's, exactly

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType):
        block, size = GGML_QUANT_SIZES[qtype]
        return cls(as_tensor(data), qtype, data.shape[1] // size * block)

    @property
    def nbytes(self) -> int:
        return self.data.numel()


class GGUFBlockWeight(BlockBytes):
    """`data` stays the file's blocks (rows, dequantize, saving read them); `kernel_data` and
    `kernel_type` are what the matmul reads: the same, or after `repack()` a Q4_K or Q5_0 matrix
    in the 8-row layout of `native/csrc/gguf_x8.h` (1.6-2.7x the products per second here)."""

    kind = "gguf"

    def __init__(self, data: torch.Tensor, qtype: GGMLQuantizationType, in_features: int) -> None:
        super().__init__(data, qtype, in_features)
        self.kernel_type = int(qtype)

    @property
    def kernel_data(self) -> torch.Tensor:
        return self.packed if self.kernel_type >= X8 else self.data

    def repack(self) -> bool:
        """Repack a Q4_K or Q5_0 matrix of a multiple of 8 rows for the matmul (anything else: False and
        no change). A matmul's outputs then differ from the file layout's by float rounding
        (about 1e-7 relative), and stay the same for every row whatever the batch."""
        if not repack_ok(self.qtype, self.out_features) or self.kernel_type >= X8:
            return False
        packed = native.module().gguf_repack(self.data, int(self.qtype))
        self.register_buffer("packed", packed, persistent=False)
        self.kernel_type = X8 + int(self.qtype)
        return True

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` (any float dtype) -> `[M, N]` float32."""
        return native.module().gguf_mm(x, [self.kernel_data], [self.kernel_type])

    def linear_rows(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x `[M, K]`, ids `[M, n]` -> `[M, n]` float32: row m's products with the weight rows
        `ids[m]` only (what `linear(x)[m, ids[m]]` gives, without the other rows; bit for bit in
        the file layout, which the tables this is used on keep: after `repack()` up to rounding)."""
        return native.module().gguf_mm_rows(x, self.data, int(self.qtype), ids.to(torch.long))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The weights of rows `ids` (any shape) as float32 `[*ids.shape, K]`, exactly."""
        flat = ids.reshape(-1).to(device="cpu", dtype=torch.long)
        out = native.module().gguf_rows(self.data, int(self.qtype), flat, self.in_features)
        return out.view(*ids.shape, self.in_features)

    def dequantize(self) -> torch.Tensor:
        return self.rows(torch.arange(self.out_features))


class GGUFMultiWeight(nn.Module):
    """Matrices with the same inputs (any mix of block types), multiplied in one kernel call:
    `linear(x)` is their outputs side by side."""

    kind = "gguf"

    def __init__(self, parts: list[GGUFBlockWeight]) -> None:
        super().__init__()
        if len({p.in_features for p in parts}) != 1:
            raise ValueError("fused matrices must have the same inputs")
        self.parts = parts  # plain list: the parts stay owned (and saved) by their own modules
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return native.module().gguf_mm(x, self.kernel_data, self.kernel_types)

    @property
    def kernel_data(self) -> list[torch.Tensor]:
        return [p.kernel_data for p in self.parts]

    @property
    def kernel_types(self) -> list[int]:
        return [p.kernel_type for p in self.parts]

    @property
    def nbytes(self) -> int:
        return 0  # counted by the parts
