"""The scale searches of ggml's quantizers (`make_*_quants` in ggml-quants.c), in numpy, bit for bit.

Each one runs on many sub-blocks at once, laid out [n, n_sub]: the element index first, so every
reduction runs element by element from 0.0f as the C loops do (`seq_sum`, never numpy's pairwise
sum). Every operation is float32 in the C order of evaluation (`w*x*l` is `(w*x)*l`); integers
stored in `uint8_t` wrap as they do in C. The codecs (codecs.py, codecs_k.py) build on these.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "F32",
    "GROUP_MAX_EPS",
    "nearest_int",
    "seq_sum",
    "fp16",
    "first_absmax",
    "make_qx_quants",
    "make_q3_quants",
    "make_qkx_quants",
    "make_qp_quants",
]

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even through the float mantissa (exact for |v| < 2^22)."""
    bits = (np.asarray(v, dtype=F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis one element after another, from 0.0f (the C loop's order)."""
    acc = np.zeros(a.shape[1:], dtype=F32)
    for row in a:
        acc += row
    return acc


def fp16(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # ggml stores inf as well
        return np.asarray(v, dtype=F32).astype(np.float16)


def first_absmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The value of largest magnitude along `axis`: the first on ties, as the C `>` keeps."""
    idx = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)


def make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw): (L in [0, 2 nmax), scale). `w` is qw, or
    None for rmse_type 1's own weights x*x."""
    xmax = first_absmax(x)
    zero = np.abs(xmax) < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1), xmax)
    w = x * x if w is None else w

    def attempt(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, seq_sum((w * x) * lf), seq_sum((w * lf) * lf)

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


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true): (L in [0, 2 nmax), scale).

    The C loop stops after a pass that changes nothing; such a pass leaves its state as it was, so
    running all five passes everywhere gives the same result."""
    xmax = first_absmax(x)
    zero = np.abs(xmax) < GROUP_MAX_EPS
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / np.where(zero, F32(1), xmax)
        L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = L.astype(F32)
        sumlx, suml2 = seq_sum((w * x) * lf), seq_sum((w * lf) * lf)
        for _ in range(5):
            for i in range(x.shape[0]):
                wx, li = w[i] * x[i], L[i].astype(F32)
                slx = sumlx - wx * li
                sl2 = suml2 - (w[i] * li) * li
                new_l = np.clip(nearest_int((x[i] * sl2) / slx), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx_new = slx + wx * nf
                sl2_new = sl2 + (w[i] * nf) * nf
                accept = (
                    (slx > 0)
                    & (new_l != L[i])
                    & (sl2_new > 0)
                    & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new)
                )
                L[i] = np.where(accept, new_l, L[i])
                sumlx = np.where(accept, slx_new, sumlx)
                suml2 = np.where(accept, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, 0, L + nmax), np.where(zero, F32(0), scale).astype(F32)


def make_qkx_quants(
    x: np.ndarray,
    w: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    *,
    use_mad: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants, and make_qkx3_quants with weights (the same arithmetic): (L, scale, the_min)."""
    # the first of equal values, as the C `<` keeps: the sign of a zero min is stored (Q4_1, Q5_1)
    xmin = np.take_along_axis(x, x.argmin(axis=0)[None], axis=0)[0]
    xmax = x.max(axis=0)
    sum_w = seq_sum(w)
    sum_x = w[0] * x[0]  # the C loop starts from w[0]*x[0], not from 0.0f
    for i in range(1, x.shape[0]):
        sum_x = sum_x + w[i] * x[i]
    xmin = np.where(xmin > 0, F32(0), xmin)
    flat = xmax == xmin

    def error(scale: np.ndarray, lf: np.ndarray, the_min: np.ndarray) -> np.ndarray:
        diff = scale * lf + the_min - x
        return seq_sum(w * (np.abs(diff) if use_mad else diff * diff))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = np.where(flat, F32(1), xmax - xmin)
        iscale = F32(nmax) / span
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (x - xmin)), 0, nmax)
        best = error(scale, L.astype(F32), xmin)
        for step in range(nstep + 1):
            span = np.where(flat, F32(1), xmax - xmin)  # the C loop moves `min` as it improves
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            laux = np.clip(nearest_int(iscale * (x - xmin)), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * lf), seq_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, lf, this_min)
            better = (det > 0) & (cur < best) & ~flat
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            xmin = np.where(better, this_min, xmin)
    L = np.where(flat, 0, L)
    scale = np.where(flat, F32(0), scale)
    return L, scale.astype(F32), (-xmin).astype(F32)


def make_qp_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants(n, nmax, x, L, quant_weights): (L as uint8 values, scale) for the scales and
    mins of K-quant super-blocks (x >= 0 in practice; negatives wrap in `uint8_t L` as in C).
    The five refinement passes run everywhere (see make_q3_quants)."""
    xmax = np.zeros(x.shape[1:], dtype=F32)
    for row in x:
        xmax = np.where(xmax > row, xmax, row)  # MAX(max, x[i])
    zero = xmax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1), xmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / safe_max
        L = nearest_int(iscale * x) & 0xFF
        scale = F32(1) / iscale
        diff = x - scale * L.astype(F32)
        best = seq_sum((w * diff) * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / safe_max
            lv = np.minimum(nmax, nearest_int(iscale_is * x)).astype(F32)
            diff = x - (F32(1) / iscale_is) * lv
            mse = seq_sum((w * diff) * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_is, iscale)
        lv = np.minimum(nmax, nearest_int(iscale * x))
        L = lv & 0xFF
        lf = lv.astype(F32)
        sumlx, suml2 = seq_sum((w * x) * lf), seq_sum((w * lf) * lf)
        for _ in range(5):
            for i in range(x.shape[0]):
                wx, li = w[i] * x[i], L[i].astype(F32)
                slx = sumlx - wx * li
                sl2 = suml2 - (w[i] * li) * li
                new_l = np.minimum(nmax, nearest_int((x[i] * sl2) / slx))
                nf = new_l.astype(F32)
                slx_new = slx + wx * nf
                sl2_new = sl2 + (w[i] * nf) * nf
                accept = (
                    (slx > 0)
                    & (sl2 > 0)
                    & (new_l != L[i])
                    & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new)
                )
                L[i] = np.where(accept, new_l & 0xFF, L[i])
                sumlx = np.where(accept, slx_new, sumlx)
                suml2 = np.where(accept, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, 0, L), np.where(zero, F32(0), scale).astype(F32)
