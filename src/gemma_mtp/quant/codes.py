"""GGUF quant blocks as integer codes with per-group affine parameters: w = scale * code + zero.

Every supported type decodes exactly (in float32) to what `gguf.quants.dequantize` returns; this
form is what the kernel formats in `formats.py` are built from. One small decoder per type, all
working on whole rows of raw block bytes (numpy uint8, `[rows, bytes_per_row]`), vectorized over
blocks. Layouts follow ggml's `block_q*` structs (gguf-py 0.19.0 `quants.py` decodes the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K as _Q4K

__all__ = ["GroupCodes", "CODE_TYPES", "SYMMETRIC_TYPES", "decode_codes"]

Q = GGMLQuantizationType


@dataclass(frozen=True)
class GroupCodes:
    """`w[r, k] = scale[r, k // group] * codes[r, k] + zero[r, k // group]`, exact in float32.

    `symmetric_offset` is set when `zero == -symmetric_offset * scale` (Q4_0, Q5_0, Q8_0, Q6_K):
    the zero is then a power of two times the scale, which some kernel formats represent exactly.
    """

    codes: np.ndarray  # uint8 [rows, K], values in [0, 2**bits)
    scale: np.ndarray  # float32 [rows, K // group]
    zero: np.ndarray  # float32 [rows, K // group]
    group: int
    bits: int
    symmetric_offset: int | None = None

    def dequantize(self) -> np.ndarray:
        rows, k = self.codes.shape
        w = self.codes.reshape(rows, k // self.group, self.group).astype(np.float32)
        w = w * self.scale[..., None] + self.zero[..., None]
        return w.reshape(rows, k)


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes per block (last axis) -> float32 [blocks]."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] codes: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """[..., 4] bytes (a little-endian uint32) -> [..., 32] bits, bit j is element j's fifth bit."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q8_0(b: np.ndarray) -> tuple:
    d = _f16(b[..., :2])
    codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, d, -128 * d, 32, 8, 128


def _q4_0(b: np.ndarray) -> tuple:
    d = _f16(b[..., :2])
    return _nibbles(b[..., 2:]), d, -8 * d, 32, 4, 8


def _q4_1(b: np.ndarray) -> tuple:
    return _nibbles(b[..., 4:]), _f16(b[..., :2]), _f16(b[..., 2:4]), 32, 4, None


def _q5_0(b: np.ndarray) -> tuple:
    d = _f16(b[..., :2])
    codes = _nibbles(b[..., 6:]) | (_high_bits(b[..., 2:6]) << 4)
    return codes, d, -16 * d, 32, 5, 16


def _q5_1(b: np.ndarray) -> tuple:
    codes = _nibbles(b[..., 8:]) | (_high_bits(b[..., 4:8]) << 4)
    return codes, _f16(b[..., :2]), _f16(b[..., 2:4]), 32, 5, None


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K super-block header -> per-32 scale and zero [blocks, 8]."""
    d, dmin = _f16(b[..., :2]), _f16(b[..., 2:4])
    shape = b.shape[:-1]
    sc, m = _Q4K.get_scale_min(np.ascontiguousarray(b[..., 4:16]).reshape(-1, 12))
    sc, m = sc.reshape(*shape, 8).astype(np.float32), m.reshape(*shape, 8).astype(np.float32)
    return d[..., None] * sc, -(dmin[..., None] * m)


def _q4_k(b: np.ndarray) -> tuple:
    scale, zero = _k_scales(b)
    qs = b[..., 16:].reshape(*b.shape[:-1], 4, 32)  # sub-blocks 2i (low nibbles) and 2i+1 (high)
    codes = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(*b.shape[:-1], 256)
    return codes, scale, zero, 32, 4, None


def _q5_k(b: np.ndarray) -> tuple:
    scale, zero = _k_scales(b)
    qh = b[..., 16:48]  # bit j of byte i: element i of sub-block j
    qs = b[..., 48:].reshape(*b.shape[:-1], 4, 32)
    low = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(*b.shape[:-1], 8, 32)
    high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1
    return (low | (high << 4)).reshape(*b.shape[:-1], 256), scale, zero, 32, 5, None


def _q6_k(b: np.ndarray) -> tuple:
    lead = b.shape[:-1]
    ql = b[..., :128].reshape(*lead, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8)[:, None]
    ql = (ql & 0x0F).reshape(*lead, 8, 32)
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    qh = (qh & 0x03).reshape(*lead, 8, 32)
    codes = (ql | (qh << 4)).reshape(*lead, 256)
    scale = _f16(b[..., 208:210])[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    return codes, scale, -32 * scale, 16, 6, 32


_DECODERS: dict[GGMLQuantizationType, Callable[[np.ndarray], tuple]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
CODE_TYPES = frozenset(_DECODERS)
# zero = -2^p * scale: the types whose zeros int4pack holds exactly
SYMMETRIC_TYPES = frozenset({Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.Q6_K})


def decode_codes(data: np.ndarray, qtype: GGMLQuantizationType) -> GroupCodes:
    """Raw rows of blocks (`[rows, bytes_per_row]` uint8) -> `GroupCodes` (`[rows, K]`)."""
    block, size = GGML_QUANT_SIZES[qtype]
    rows = data.shape[0]
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, -1, size)
    codes, scale, zero, group, bits, offset = _DECODERS[qtype](blocks)
    k = blocks.shape[1] * block
    return GroupCodes(
        codes=np.ascontiguousarray(codes, dtype=np.uint8).reshape(rows, k),
        scale=np.ascontiguousarray(scale, dtype=np.float32).reshape(rows, k // group),
        zero=np.ascontiguousarray(zero, dtype=np.float32).reshape(rows, k // group),
        group=group,
        bits=bits,
        symmetric_offset=offset,
    )
