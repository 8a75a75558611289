"""Quantization encoders in numpy, bit for bit with ggml's `ggml_quantize_chunk`.

`encode(values, qtype, importance=None)` is the one entry point. Without an importance matrix
every type is ggml's reference quantizer (`quantize_row_*_ref` in ggml-quants.c; the legacy types
as `gguf.quants` does them); with one, the weighted searches `ggml_quantize_chunk` runs when it is
given `quant_weights` (`quantize_row_*_impl`): Q2_K..Q6_K (codecs_k.py) and Q4_0, Q4_1, Q5_0,
Q5_1 (below). Q8_0, F16 and BF16 ignore the weights, as ggml does.

Every operation is float32 in the C order of evaluation: reductions run element by element
(`seq_sum`, never numpy's pairwise sum), and `nearest_int` is the C bit trick, so even
out-of-range values round as ggml's do. ggml-base is built for the baseline x86-64 ISA (no FMA
contraction), which is what these encoders reproduce; tests/fixtures/ggml holds ggml's own outputs
to prove it. Blocks are vectorised: a tensor is reshaped to [n_blocks, block] and each step runs on
every block at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UsageError
from .codecs_k import quantize_q2_k, quantize_q3_k, quantize_q4_k, quantize_q5_k, quantize_q6_k
from .codecs_search import F32, fp16, make_qkx_quants, make_qx_quants, seq_sum

__all__ = ["ENCODERS", "WEIGHTED", "encode", "can_encode"]

T = GGMLQuantizationType


# ------------------------------------------------------------------------------------- legacy types


def _absmax_signed(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude per block (the first one on ties, as the C `<` keeps; +0.0
    for an all-zero block, whose C loop never leaves its initial 0.0f)."""
    idx = np.abs(x).argmax(axis=1)
    value = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
    return np.where(value == 0, F32(0), value)


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block min and max as the C loops find them: the first of equal values (-0.0 vs 0.0)."""
    lo = np.take_along_axis(x, x.argmin(axis=1)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(x, x.argmax(axis=1)[:, None], axis=1)[:, 0]
    return lo, hi


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)


def _trunc_u8(v: np.ndarray) -> np.ndarray:
    """C's (int8_t)/(uint8_t) cast of a float: truncate toward zero, keep the low byte."""
    return (np.trunc(v).astype(np.int64) & 0xFF).astype(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """qs[j] = q[j] | q[j + 16] << 4 for 32-element blocks."""
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit j of a little-endian uint32 = bit 4 of q[j]."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _h(v: np.ndarray) -> np.ndarray:
    return fp16(v).view(np.uint8).reshape(-1, 2)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    d = _absmax_signed(x) / F32(-8)
    q = np.minimum(_trunc_u8(x * _inverse(d)[:, None] + F32(8.5)).view(np.int8), 15).astype(np.uint8)
    return np.concatenate([_h(d), _nibbles(q)], 1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / F32(15)
    q = _trunc_u8((x - lo[:, None]) * _inverse(d)[:, None] + F32(0.5))
    q = np.minimum(q.view(np.int8), 15).astype(np.uint8)
    return np.concatenate([_h(d), _h(lo), _nibbles(q)], 1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    d = _absmax_signed(x) / F32(-16)
    q = np.minimum(_trunc_u8(x * _inverse(d)[:, None] + F32(16.5)).view(np.int8), 31).astype(np.uint8)
    return np.concatenate([_h(d), _high_bits(q), _nibbles(q)], 1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / F32(31)
    q = _trunc_u8((x - lo[:, None]) * _inverse(d)[:, None] + F32(0.5))
    return np.concatenate([_h(d), _h(lo), _high_bits(q), _nibbles(q)], 1)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1) / F32(127)
    v = (x * _inverse(d)[:, None]).astype(np.float64)  # adding 0.5 is exact in float64
    q = np.trunc(v + np.copysign(0.5, v))  # roundf: half away from zero
    return np.concatenate([_h(d), q.astype(np.int8).view(np.uint8)], 1)


def quantize_f16(x: np.ndarray) -> np.ndarray:
    return fp16(x).view(np.uint8)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaN made quiet."""
    n = x.view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16).view(np.uint8)


# ------------------------------------------------------------------------------------- weighted legacy types
# quantize_row_q{4_0,4_1,5_0,5_1}_impl: whole rows [n_rows, n_per_row], since sigma2 is per row.


def _row_weights(rows: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks [32, n_blocks], qw * sqrt(sigma2 + x^2) laid out the same), sigma2 = mean x^2 of the row."""
    sigma2 = seq_sum(rows.T * rows.T) / F32(rows.shape[1])
    xb = rows.reshape(-1, 32).T
    sigma2 = np.repeat(sigma2, rows.shape[1] // 32)
    return xb, qw.reshape(-1, 32).T * np.sqrt(sigma2 + xb * xb)


def _q4_0_w(rows: np.ndarray, qw: np.ndarray) -> np.ndarray:
    xb, w = _row_weights(rows, qw)
    L, d = make_qx_quants(xb, 8, w)
    return np.concatenate([_h(d), _nibbles(L.T.astype(np.uint8))], 1)


def _q5_0_w(rows: np.ndarray, qw: np.ndarray) -> np.ndarray:
    xb, w = _row_weights(rows, qw)
    L, d = make_qx_quants(xb, 16, w)
    q = L.T.astype(np.uint8)
    return np.concatenate([_h(d), _high_bits(q), _nibbles(q)], 1)


def _q4_1_w(rows: np.ndarray, qw: np.ndarray) -> np.ndarray:
    xb, w = _row_weights(rows, qw)
    L, d, the_min = make_qkx_quants(xb, w, 15, -0.9, 0.05, 36)
    return np.concatenate([_h(d), _h(-the_min), _nibbles(L.T.astype(np.uint8))], 1)


def _q5_1_w(rows: np.ndarray, qw: np.ndarray) -> np.ndarray:
    xb, w = _row_weights(rows, qw)
    L, d, the_min = make_qkx_quants(xb, w, 31, -0.9, 0.05, 36)
    q = L.T.astype(np.uint8)
    return np.concatenate([_h(d), _h(-the_min), _high_bits(q), _nibbles(q)], 1)


def _k_rows(encoder: Callable[..., np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A K-quant encoder on whole rows: its weights are per super-block, rows do not matter."""
    return lambda rows, qw: encoder(rows.reshape(-1, 256), qw.reshape(-1, 256))


# ------------------------------------------------------------------------------------- dispatch

ENCODERS = {
    T.F16: quantize_f16,
    T.BF16: quantize_bf16,
    T.Q4_0: quantize_q4_0,
    T.Q4_1: quantize_q4_1,
    T.Q5_0: quantize_q5_0,
    T.Q5_1: quantize_q5_1,
    T.Q8_0: quantize_q8_0,
    T.Q2_K: quantize_q2_k,
    T.Q3_K: quantize_q3_k,
    T.Q4_K: quantize_q4_k,
    T.Q5_K: quantize_q5_k,
    T.Q6_K: quantize_q6_k,
}
# Types whose encoding uses an importance matrix: (rows [n, n_per_row], weights alike) -> bytes.
WEIGHTED: dict[GGMLQuantizationType, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    T.Q4_0: _q4_0_w,
    T.Q4_1: _q4_1_w,
    T.Q5_0: _q5_0_w,
    T.Q5_1: _q5_1_w,
    T.Q2_K: _k_rows(quantize_q2_k),
    T.Q3_K: _k_rows(quantize_q3_k),
    T.Q4_K: _k_rows(quantize_q4_k),
    T.Q5_K: _k_rows(quantize_q5_k),
    T.Q6_K: _k_rows(quantize_q6_k),
}
SLAB_VALUES = 1 << 19  # values encoded per numpy pass: big enough to amortise, small enough for cache


def can_encode(qtype: GGMLQuantizationType, n_per_row: int) -> bool:
    return qtype in ENCODERS and n_per_row % GGML_QUANT_SIZES[qtype][0] == 0


def _importance_rows(importance: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The weights for every row of `values` [..., n]: one vector [n] for all rows (kept as it is),
    or an array that broadcasts to the values' shape (e.g. [n_expert, 1, n])."""
    imp = np.asarray(importance, dtype=F32)
    try:
        if imp.ndim == 1:
            np.broadcast_shapes(imp.shape, shape)
            return imp
        return np.ascontiguousarray(np.broadcast_to(imp, shape)).reshape(-1, shape[-1])
    except ValueError:
        raise UsageError(
            f"importance of shape {list(imp.shape)} does not match values of shape {list(shape)}"
        ) from None


def encode(
    values: np.ndarray, qtype: GGMLQuantizationType, importance: np.ndarray | None = None
) -> np.ndarray:
    """float values [..., n] -> uint8 [..., n / block_size * type_size], ggml's bytes for `qtype`;
    weighted by `importance` (one weight per column, e.g. `ImatrixData.importance(name)[expert]`)
    as `ggml_quantize_chunk(..., quant_weights)` is, where the type uses weights."""
    if qtype not in ENCODERS:
        raise UsageError(
            f"no encoder for {qtype.name}; gemma-mtp encodes {', '.join(t.name for t in ENCODERS)}"
        )
    block, type_size = GGML_QUANT_SIZES[qtype]
    values = np.ascontiguousarray(values, dtype=F32)
    n = values.shape[-1]
    if n % block:
        raise UsageError(f"rows of {n} values do not fit {qtype.name} blocks of {block}")
    rows = values.reshape(-1, n)
    weights = None
    if importance is not None and qtype in WEIGHTED:
        weights = _importance_rows(importance, values.shape)
    out = np.empty((rows.shape[0], n // block * type_size), dtype=np.uint8)
    step = max(1, SLAB_VALUES // n)
    for start in range(0, rows.shape[0], step):
        slab = rows[start : start + step]
        if weights is None:
            out[start : start + step] = ENCODERS[qtype](slab.reshape(-1, block)).reshape(-1, out.shape[1])
            continue
        qw = np.broadcast_to(weights, slab.shape) if weights.ndim == 1 else weights[start : start + step]
        out[start : start + step] = WEIGHTED[qtype](slab, np.ascontiguousarray(qw)).reshape(-1, out.shape[1])
    return out.reshape(*values.shape[:-1], out.shape[1])
