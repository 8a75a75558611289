"""Quantization encoders in numpy: ggml's reference quantizers (no importance matrix), bit for bit.

K-quants follow `quantize_row_q{4,5,6}_K_ref` in ggml's `ggml-quants.c`; the legacy types follow
`quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref` (as `gguf.quants` does). Every operation is float32 in the
C order of evaluation: reductions run element by element (`_seq_sum`, never numpy's pairwise sum),
and `nearest_int` is the C bit trick, so even out-of-range values round as ggml's do. ggml-base is
built for the baseline x86-64 ISA (no FMA contraction), which is what these encoders reproduce;
tests/fixtures/ggml holds ggml's own outputs to prove it.

Blocks are vectorised: a tensor is reshaped to [n_blocks, 256] and each step runs on every block.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UsageError

__all__ = ["ENCODERS", "encode", "can_encode"]

T = GGMLQuantizationType
QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
F32 = np.float32


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even through the float mantissa (exact for |v| < 2^22)."""
    bits = (v.astype(F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis one element after another, from 0.0f (the C loop's order)."""
    acc = np.zeros(a.shape[1:], dtype=F32)
    for row in a:
        acc += row
    return acc


def _fp16(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # ggml stores inf as well
        return v.astype(np.float16)


# ------------------------------------------------------------------------------------- Q4_K / Q5_K


def _make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants (use_mad=false) on sub-blocks laid out [n, n_sub]: (L, scale, the_min)."""
    xmin, xmax = x.min(axis=0), x.max(axis=0)
    sum_w = _seq_sum(w)
    sum_x = w[0] * x[0]  # the C loop starts from w[0]*x[0], not from 0.0f
    for i in range(1, x.shape[0]):
        sum_x = sum_x + w[i] * x[i]
    xmin = np.minimum(xmin, F32(0))
    flat = xmax == xmin
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = np.where(flat, F32(1), xmax - xmin)
        iscale = F32(nmax) / span
        scale = F32(1) / iscale
        L = np.clip(_nearest_int(iscale * (x - xmin)), 0, nmax)
        diff = scale * L.astype(F32) + xmin - x
        best = _seq_sum(w * (diff * diff))
        for step in range(nstep + 1):
            span = np.where(flat, F32(1), xmax - xmin)  # the C loop moves `min` as it improves
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            laux = np.clip(_nearest_int(iscale * (x - xmin)), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l, sum_l2, sum_xl = _seq_sum(wl), _seq_sum(wl * lf), _seq_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = this_scale * lf + this_min - x
            cur = _seq_sum(w * (diff * diff))
            better = (det > 0) & (cur < best) & ~flat
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            xmin = np.where(better, this_min, xmin)
    L = np.where(flat, 0, L)
    scale = np.where(flat, F32(0), scale)
    return L, scale.astype(F32), (-xmin).astype(F32)


def _kquant_scales(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The common half of Q4_K and Q5_K: 8 sub-blocks of 32 per 256-block.
    Returns (L [nb, 256] uint8, d, dmin (fp16), packed scales [nb, 12])."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32).T  # [32, n_sub]: element index first, so reductions are sequential
    av_x = np.sqrt(_seq_sum(xs * xs) / F32(32))
    w = av_x + np.abs(xs)
    L, scales, mins = _make_qkx2_quants(xs, w, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(np.where(np.isnan(scales), 0, scales).max(axis=1), F32(0))
    max_min = np.maximum(np.where(np.isnan(mins), 0, mins).max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d, dmin = _fp16(max_scale / F32(63)), _fp16(max_min / F32(63))
    # second pass: requantize every value against the stored 6-bit scales and mins
    sub_d = d.astype(F32)[:, None] * ls.astype(F32)  # [nb, 8]
    sub_m = dmin.astype(F32)[:, None] * lm.astype(F32)
    L = L.T.reshape(nb, 8, 32)
    x8 = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int((x8 + sub_m[..., None]) / sub_d[..., None]), 0, nmax)
    L = np.where(sub_d[..., None] != 0, requant, L).astype(np.uint8).reshape(nb, QK_K)
    return L, d, dmin, packed


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    L, d, dmin, scales = _kquant_scales(x, 15, -1.0, 20)
    nb = x.shape[0]
    L = L.reshape(nb, 4, 2, 32)  # 4 chunks of 64: low nibble = first 32, high nibble = next 32
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), scales, qs], 1
    )


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    L, d, dmin, scales = _kquant_scales(x, 31, -0.5, 15)
    nb = x.shape[0]
    sub = L.reshape(nb, 8, 32)
    high = (sub >> 4).astype(np.uint8)  # bit s of qh[j] = high bit of element j of sub-block s
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for s in range(8):
        qh |= high[:, s] << s
    low = (sub & 0xF).reshape(nb, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), scales, qh, qs], 1
    )


# ------------------------------------------------------------------------------------- Q6_K


def _make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on sub-blocks laid out [n, n_sub]."""
    amax_idx = np.abs(x).argmax(axis=0)  # first index of the largest |x|, as the C `>` keeps
    xmax = np.take_along_axis(x, amax_idx[None], axis=0)[0]
    zero = np.abs(xmax) < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1), xmax)
    w = x * x

    def attempt(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, _seq_sum((w * x) * lf), _seq_sum((w * lf) * lf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lv, sumlx, suml2 = attempt(F32(-nmax) / safe_max)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        L = lv + nmax
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / safe_max
            lv, sumlx, suml2 = attempt(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, lv + nmax, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    L = np.where(zero, 0, L)
    return L, np.where(zero, F32(0), scale).astype(F32)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).T  # [16, n_sub]
    L, scales = _make_qx_quants_rmse1(xs, 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(empty, F32(0), F32(-128) / np.where(empty, F32(1), max_scale)).astype(F32)
        d = np.where(empty, np.float16(0), _fp16(F32(1) / iscale))
    sc = (np.minimum(_nearest_int(iscale[:, None] * scales), 127) & 0xFF).astype(np.uint8).view(np.int8)
    sub_d = d.astype(F32)[:, None] * sc.astype(F32)  # [nb, 16]
    x16 = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int(x16 / sub_d[..., None]), -32, 31) + 32
    L = np.where(sub_d[..., None] != 0, requant, L)
    L = np.where(empty[:, None, None], 0, L).astype(np.uint8).reshape(nb, 2, 4, 32)  # 2 halves of 128
    ql = np.concatenate(
        [L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4, L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4], 2
    )
    qh = (L[:, :, 0] >> 4) | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6
    sc = np.where(empty[:, None], 0, sc.view(np.uint8)).astype(np.uint8)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc, d.view(np.uint8).reshape(nb, 2)], 1)


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
    return _fp16(v).view(np.uint8).reshape(-1, 2)


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
    return _fp16(x).view(np.uint8)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaN made quiet."""
    n = x.view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16).view(np.uint8)


# ------------------------------------------------------------------------------------- dispatch

ENCODERS = {
    T.F16: quantize_f16,
    T.BF16: quantize_bf16,
    T.Q4_0: quantize_q4_0,
    T.Q4_1: quantize_q4_1,
    T.Q5_0: quantize_q5_0,
    T.Q5_1: quantize_q5_1,
    T.Q8_0: quantize_q8_0,
    T.Q4_K: quantize_q4_k,
    T.Q5_K: quantize_q5_k,
    T.Q6_K: quantize_q6_k,
}
SLAB_VALUES = 1 << 19  # values encoded per numpy pass: big enough to amortise, small enough for cache


def can_encode(qtype: GGMLQuantizationType, n_per_row: int) -> bool:
    return qtype in ENCODERS and n_per_row % GGML_QUANT_SIZES[qtype][0] == 0


def encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float values [..., n] -> uint8 [..., n / block_size * type_size], ggml's bytes for `qtype`."""
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
    out = np.empty((rows.shape[0], n // block * type_size), dtype=np.uint8)
    step = max(1, SLAB_VALUES // n)
    for start in range(0, rows.shape[0], step):
        blocks = rows[start : start + step].reshape(-1, block)
        out[start : start + step] = ENCODERS[qtype](blocks).reshape(-1, out.shape[1])
    return out.reshape(*values.shape[:-1], out.shape[1])
