"""K-quant encoders (Q2_K .. Q6_K) in numpy, bit for bit with ggml's `ggml_quantize_chunk`.

Without an importance matrix that is `quantize_row_q{2..6}_K_ref`; with one (`qw`, one weight per
column of the row) it is `quantize_row_q{2..6}_K_impl`. Each encoder takes 256-value super-blocks
[n_blocks, 256] and, when weighted, their weights laid out the same way; it returns the blocks'
bytes [n_blocks, type_size]. The scale searches are in codecs_search.py.
"""

from __future__ import annotations

import numpy as np

from .codecs_search import (
    F32,
    GROUP_MAX_EPS,
    first_absmax,
    fp16,
    make_q3_quants,
    make_qkx_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    seq_sum,
)

__all__ = ["quantize_q2_k", "quantize_q3_k", "quantize_q4_k", "quantize_q5_k", "quantize_q6_k"]

QK_K = 256


def _u8(v: np.ndarray) -> np.ndarray:
    """A C store into uint8_t: the low byte."""
    return (np.asarray(v).astype(np.int64) & 0xFF).astype(np.uint8)


def _bytes(v: np.ndarray) -> np.ndarray:
    return v.view(np.uint8).reshape(v.shape[0], -1)


def _sub_blocks(x: np.ndarray, size: int) -> np.ndarray:
    """[n_blocks, 256] -> [size, n_blocks * 256 / size]: element index first (see codecs_search)."""
    return x.reshape(-1, size).T


def _sigma2(x: np.ndarray, factor: float) -> np.ndarray:
    """factor * sum(x^2) / 256 per super-block, the sum in the C order."""
    return F32(factor) * seq_sum(x.T * x.T) / F32(QK_K)


def _imatrix_weights(x: np.ndarray, qw: np.ndarray, size: int, factor: float) -> np.ndarray:
    """qw * sqrt(sigma2 + x^2) per element, laid out as `_sub_blocks`."""
    sigma2 = np.repeat(_sigma2(x, factor), QK_K // size)  # one per sub-block
    xs = _sub_blocks(x, size)
    return _sub_blocks(qw, size) * np.sqrt(sigma2 + xs * xs)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6, j in (0, 128)."""
    q = L.astype(np.uint8).reshape(L.shape[0], 2, 4, 32)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(L.shape[0], 64)


def _per_block_max(v: np.ndarray) -> np.ndarray:
    """`if (v > max) max = v` from 0 over each row (NaN never wins)."""
    return np.maximum(np.where(np.isnan(v), 0, v).max(axis=1), F32(0))


# ------------------------------------------------------------------------------------- Q2_K


def quantize_q2_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    xs = _sub_blocks(x, 16)
    if qw is None:
        L, scales, mins = make_qkx_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale, max_min = _per_block_max(scales), _per_block_max(mins)
        has_s, has_m = max_scale > 0, max_min > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
            lm = nearest_int((F32(15) / max_min)[:, None] * mins)
        packed = np.where(has_s[:, None], ls, 0)
        packed = _u8(np.where(has_m[:, None], _u8(packed).astype(np.int64) | (lm << 4), packed))
        d = fp16(np.where(has_s, max_scale / F32(15), F32(0)))
        dmin = fp16(np.where(has_m, max_min / F32(15), F32(0)))
    else:
        w = _imatrix_weights(x, qw, 16, 1.0)
        sw = seq_sum(w).reshape(nb, 16).T
        L, scales, mins = make_qkx_quants(xs, w, 3, -0.9, 0.05, 36)
        ls, dm = make_qp_quants(scales.reshape(nb, 16).T, 15, sw)
        lm, mm = make_qp_quants(mins.reshape(nb, 16).T, 15, sw)
        packed = _u8(ls.T | (lm.T << 4))
        d, dmin = fp16(dm), fp16(mm)
    sub_d = d.astype(F32)[:, None] * (packed & 0xF).astype(F32)
    sub_m = dmin.astype(F32)[:, None] * (packed >> 4).astype(F32)
    x16 = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((x16 + sub_m[..., None]) / sub_d[..., None]), 0, 3)
    L = np.where(sub_d[..., None] != 0, requant, L.T.reshape(nb, 16, 16)).reshape(nb, QK_K)
    return np.concatenate([packed, _pack_2bit(L), _bytes(d), _bytes(dmin)], 1)


# ------------------------------------------------------------------------------------- Q3_K


def _pack_q3_scales(l6: np.ndarray) -> np.ndarray:
    """16 6-bit scales -> 12 bytes: low nibbles of 0-7 | 8-15 << 4, then 2 high bits each."""
    nb = l6.shape[0]
    packed = np.zeros((nb, 12), dtype=np.int64)
    packed[:, :8] = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    high = (l6 >> 4) & 0x3
    for j in range(16):
        packed[:, 8 + j % 4] |= high[:, j] << (2 * (j // 4))
    return _u8(packed)


def quantize_q3_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    xs = _sub_blocks(x, 16)
    if qw is None:
        L, scales = make_q3_quants(xs, 4)
        scales = scales.reshape(nb, 16)
        max_scale = first_absmax(scales, axis=1)
        has = max_scale != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F32(-32) / np.where(has, max_scale, F32(1))
            l8 = (nearest_int(iscale[:, None] * scales) + 128) % 256 - 128  # int8_t l = nearest_int(...)
            d = fp16(np.where(has, F32(1) / iscale, F32(0)))
        l6 = np.where(has[:, None], np.clip(l8, -32, 31) + 32, 0)
    else:
        w = _imatrix_weights(x, qw, 16, 2.0)
        L, scales = make_qx_quants(xs, 4, w)
        l6, d_block = make_qx_quants(scales.reshape(nb, 16).T, 32, seq_sum(w).reshape(nb, 16).T)
        l6, d = l6.T, fp16(d_block)
    packed = _pack_q3_scales(l6)
    sub_d = d.astype(F32)[:, None] * (l6 - 32).astype(F32)  # the packed scale, read back
    x16 = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int(x16 / sub_d[..., None]), -4, 3) + 4
    L = np.where(sub_d[..., None] != 0, requant, L.T.reshape(nb, 16, 16)).reshape(nb, QK_K)
    high = L > 3
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for bit in range(8):  # bit b of hmask[m] is the high bit of element 32 b + m
        hmask |= high[:, 32 * bit : 32 * bit + 32].astype(np.uint8) << bit
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), packed, _bytes(d)], 1)


# ------------------------------------------------------------------------------------- Q4_K / Q5_K


def _pack_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 6-bit scales and mins -> 12 bytes (get_scale_min_k4 reads them back)."""
    ls, lm = ls.astype(np.int64), lm.astype(np.int64)
    packed = np.zeros((ls.shape[0], 12), dtype=np.int64)
    packed[:, 0:4] = _u8(ls[:, 0:4]) | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = _u8(lm[:, 0:4]) | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return _u8(packed)


def _unpack_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: (scales, mins) [n_blocks, 8]."""
    q = q.astype(np.int64)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], 1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], 1)
    return sc, m


def _kquant_scales(x: np.ndarray, nmax: int, rmin: float, nstep: int, qw: np.ndarray | None):
    """The common half of Q4_K and Q5_K: 8 sub-blocks of 32 per 256-block.
    Returns (L [nb, 256] uint8, d, dmin (fp16), packed scales [nb, 12])."""
    nb = x.shape[0]
    xs = _sub_blocks(x, 32)
    if qw is None:
        av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
        L, scales, mins = make_qkx_quants(xs, av_x + np.abs(xs), nmax, rmin, 0.1, nstep)
        scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale, max_min = _per_block_max(scales), _per_block_max(mins)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
        d, dmin = fp16(max_scale / F32(63)), fp16(max_min / F32(63))
    else:
        w = _imatrix_weights(x, qw, 32, 2.0)
        sw = seq_sum(w).reshape(nb, 8).T
        L, scales, mins = make_qkx_quants(xs, w, nmax, -0.9, 0.05, 36)
        ls, d_block = make_qp_quants(scales.reshape(nb, 8).T, 63, sw)
        lm, m_block = make_qp_quants(mins.reshape(nb, 8).T, 63, sw)
        ls, lm = ls.T, lm.T
        if nmax == 31:  # Q5_K clamps, Q4_K does not
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        d, dmin = fp16(d_block), fp16(m_block)
    packed = _pack_k4(ls, lm)
    sc, m = _unpack_k4(packed)  # the second pass requantizes against what is stored
    sub_d = d.astype(F32)[:, None] * sc.astype(F32)
    sub_m = dmin.astype(F32)[:, None] * m.astype(F32)
    x8 = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((x8 + sub_m[..., None]) / sub_d[..., None]), 0, nmax)
    L = np.where(sub_d[..., None] != 0, requant, L.T.reshape(nb, 8, 32))
    return L.astype(np.uint8).reshape(nb, QK_K), d, dmin, packed


def quantize_q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    L, d, dmin, scales = _kquant_scales(x, 15, -1.0, 20, qw)
    nb = x.shape[0]
    L = L.reshape(nb, 4, 2, 32)  # 4 chunks of 64: low nibble = first 32, high nibble = next 32
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qs], 1)


def quantize_q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    L, d, dmin, scales = _kquant_scales(x, 31, -0.5, 15, qw)
    nb = x.shape[0]
    sub = L.reshape(nb, 8, 32)
    high = (sub >> 4).astype(np.uint8)  # bit s of qh[j] = high bit of element j of sub-block s
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for s in range(8):
        qh |= high[:, s] << s
    low = (sub & 0xF).reshape(nb, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qh, qs], 1)


# ------------------------------------------------------------------------------------- Q6_K


def quantize_q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Weighted, ggml uses the importance as it is (no sigma term) in each sub-block's search."""
    nb = x.shape[0]
    L, scales = make_qx_quants(_sub_blocks(x, 16), 32, None if qw is None else _sub_blocks(qw, 16))
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    max_scale = first_absmax(scales, axis=1)
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(empty, F32(0), F32(-128) / np.where(empty, F32(1), max_scale)).astype(F32)
        d = np.where(empty, np.float16(0), fp16(F32(1) / iscale))
    sc = (np.minimum(nearest_int(iscale[:, None] * scales), 127) & 0xFF).astype(np.uint8).view(np.int8)
    sub_d = d.astype(F32)[:, None] * sc.astype(F32)  # [nb, 16]
    x16 = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int(x16 / sub_d[..., None]), -32, 31) + 32
    L = np.where(sub_d[..., None] != 0, requant, L)
    L = np.where(empty[:, None, None], 0, L).astype(np.uint8).reshape(nb, 2, 4, 32)  # 2 halves of 128
    ql = np.concatenate(
        [L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4, L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4], 2
    )
    qh = (L[:, :, 0] >> 4) | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6
    sc = np.where(empty[:, None], 0, sc.view(np.uint8)).astype(np.uint8)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc, _bytes(d)], 1)
