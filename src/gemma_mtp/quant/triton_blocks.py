"""Fused dequantize-GEMV/GEMM in Triton for 1-8 activation rows over GGUF blocks (Q8_0, Q4_K,
Q5_K, Q6_K, IQ4_XS): each program decodes a tile of weight rows one block at a time in registers and
accumulates its products in float32, so the weights are read once, as bytes, and never exist as
floats in memory. `torch_blocks.block_linear` takes this path on CUDA when triton imports (other
types and triton missing: `why_not_fused` says why, and the torch-ops path runs); Triton's
interpreter (TRITON_INTERPRET=1) runs the same kernels on a CPU for the tests. Nothing here has
been timed on a GPU yet.

The decoding follows gguf-py's arithmetic (`torch_blocks.py`), so the weights are exact; only the
order of the float32 sums differs from a dequantize-then-matmul.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .torch_blocks import lookup_table

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # an optional dependency (the dev extra; CUDA users install their own)
    triton = tl = None
    WHY_UNAVAILABLE: str | None = f"triton cannot be imported ({exc})"
else:
    WHY_UNAVAILABLE = None

__all__ = [
    "TRITON_TYPES",
    "MAX_ROWS",
    "WHY_UNAVAILABLE",
    "triton_linear",
    "triton_ok",
    "why_not_fused",
    "fused_notice",
]

Q = GGMLQuantizationType
TRITON_TYPES = frozenset({Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_XS})
MAX_ROWS = 8  # activation rows per call: decode and verify steps (1..n_max + 1)
BLOCK_N = 16  # weight rows per program


def triton_ok(qtype: GGMLQuantizationType, rows: int) -> bool:
    return WHY_UNAVAILABLE is None and qtype in TRITON_TYPES and 1 <= rows <= MAX_ROWS


def why_not_fused(qtype: GGMLQuantizationType) -> str | None:
    """Why `qtype`'s blocks never take the fused kernel (None: 1-8 rows of them do)."""
    if WHY_UNAVAILABLE is not None:
        return WHY_UNAVAILABLE
    if qtype not in TRITON_TYPES:
        have = ", ".join(q.name for q in sorted(TRITON_TYPES, key=int))
        return f"no Triton kernel for {qtype.name} (there are for {have})"
    return None


def fused_notice(counts: Mapping[GGMLQuantizationType, int]) -> str:
    """One line for a load report on a GPU: which types (with their matrix counts) the fused
    kernel multiplies for 1-8 rows, and which stay on the torch-ops path and why."""
    fused = [f"{q.name} x{n}" for q, n in sorted(counts.items()) if why_not_fused(q) is None]
    slow = [f"{q.name} x{n} ({why_not_fused(q)})" for q, n in sorted(counts.items()) if why_not_fused(q)]
    parts = [f"fused Triton dequant-matmul for 1-{MAX_ROWS} rows: {', '.join(fused)}"] if fused else []
    if slow:
        parts.append(f"torch-ops path (tiles decoded, then matmul): {', '.join(slow)}")
    return "; ".join(parts)


if triton is not None:

    @triton.jit
    def _f16_at(ptr, offs, mask):
        lo = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16)
        hi = tl.load(ptr + offs + 1, mask=mask, other=0).to(tl.uint16)
        return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _q8_0(w_ptr, row_off, nmask, b, BK: tl.constexpr):
        base = row_off + b * 34  # [BN]
        d = _f16_at(w_ptr, base, nmask)
        k = tl.arange(0, BK)
        q = tl.load(w_ptr + base[:, None] + 2 + k[None, :], mask=nmask[:, None], other=0)
        return q.to(tl.int8, bitcast=True).to(tl.float32) * d[:, None]

    @triton.jit
    def _k_scales(w_ptr, base, j, m2):
        """Q4_K/Q5_K: sub-block j's 6-bit scale and min from the 12 bytes at `base + 4`, int32."""
        s_j = tl.load(w_ptr + base[:, None] + 4 + (j % 4)[None, :], mask=m2, other=0).to(tl.int32)
        s_j4 = tl.load(w_ptr + base[:, None] + 12 + (j % 4)[None, :], mask=m2, other=0).to(tl.int32)
        s_m = tl.load(w_ptr + base[:, None] + 4 + (j % 4 + 4)[None, :], mask=m2, other=0).to(tl.int32)
        low = (j < 4)[None, :]
        sc = tl.where(low, s_j & 63, (s_j4 & 0xF) | ((s_j >> 6) << 4))
        mn = tl.where(low, s_m & 63, (s_j4 >> 4) | ((s_m >> 6) << 4))
        return sc, mn

    @triton.jit
    def _q4_k(w_ptr, row_off, nmask, b, BK: tl.constexpr):
        base = row_off + b * 144
        d = _f16_at(w_ptr, base, nmask)
        dmin = _f16_at(w_ptr, base + 2, nmask)
        i = tl.arange(0, BK)
        j = i // 32  # sub-block: its 6-bit scale and min
        m2 = nmask[:, None]
        sc, mn = _k_scales(w_ptr, base, j, m2)
        qb = tl.load(w_ptr + base[:, None] + 16 + ((j // 2) * 32 + i % 32)[None, :], mask=m2, other=0)
        q = ((qb.to(tl.int32) >> ((j % 2) * 4)[None, :]) & 0xF).to(tl.float32)
        return (d[:, None] * sc.to(tl.float32)) * q - dmin[:, None] * mn.to(tl.float32)

    @triton.jit
    def _q5_k(w_ptr, row_off, nmask, b, BK: tl.constexpr):
        base = row_off + b * 176  # d, dmin, 12 scale bytes, 32 bytes of high bits, 128 of nibbles
        d = _f16_at(w_ptr, base, nmask)
        dmin = _f16_at(w_ptr, base + 2, nmask)
        i = tl.arange(0, BK)
        j, p = i // 32, i % 32
        m2 = nmask[:, None]
        sc, mn = _k_scales(w_ptr, base, j, m2)
        qb = tl.load(w_ptr + base[:, None] + 48 + ((j // 2) * 32 + p)[None, :], mask=m2, other=0)
        lo = (qb.to(tl.int32) >> ((j % 2) * 4)[None, :]) & 0xF
        qh = tl.load(w_ptr + base[:, None] + 16 + p[None, :], mask=m2, other=0)
        hi = (qh.to(tl.int32) >> j[None, :]) & 1  # bit j of byte p: element p of sub-block j
        q = (lo | (hi << 4)).to(tl.float32)
        return (d[:, None] * sc.to(tl.float32)) * q - dmin[:, None] * mn.to(tl.float32)

    @triton.jit
    def _iq4_xs(w_ptr, tab_ptr, row_off, nmask, b, BK: tl.constexpr):
        base = row_off + b * 136  # d, 16 bits of high scale bits, 4 bytes of low ones, 128 of nibbles
        d = _f16_at(w_ptr, base, nmask)
        lo16 = tl.load(w_ptr + base + 2, mask=nmask, other=0).to(tl.int32)
        scales_h = lo16 | (tl.load(w_ptr + base + 3, mask=nmask, other=0).to(tl.int32) << 8)  # [BN]
        i = tl.arange(0, BK)
        j, p = i // 32, i % 32
        m2 = nmask[:, None]
        sl = tl.load(w_ptr + base[:, None] + 4 + (j // 2)[None, :], mask=m2, other=0).to(tl.int32)
        sl = (sl >> ((j % 2) * 4)[None, :]) & 0xF
        sh = (scales_h[:, None] >> (2 * j)[None, :]) & 3
        dl = d[:, None] * ((sl | (sh << 4)) - 32).to(tl.float32)
        qb = tl.load(w_ptr + base[:, None] + 8 + (j * 16 + p % 16)[None, :], mask=m2, other=0)
        code = (qb.to(tl.int32) >> ((p // 16) * 4)[None, :]) & 0xF
        return dl * tl.load(tab_ptr + code)  # the IQ4_NL non-linear values (gguf-py's kvalues)

    @triton.jit
    def _q6_k(w_ptr, row_off, nmask, b, BK: tl.constexpr):
        base = row_off + b * 210
        d = _f16_at(w_ptr, base + 208, nmask)
        i = tl.arange(0, BK)
        g, p = i // 32, i % 32
        m2 = nmask[:, None]
        half = g // 4
        ql = tl.load(w_ptr + base[:, None] + (half * 64 + (g % 2) * 32 + p)[None, :], mask=m2, other=0)
        lo = (ql.to(tl.int32) >> (((g // 2) % 2) * 4)[None, :]) & 0xF
        qh = tl.load(w_ptr + base[:, None] + 128 + (half * 32 + p)[None, :], mask=m2, other=0)
        hi = (qh.to(tl.int32) >> (2 * (g % 4))[None, :]) & 3
        sc = tl.load(w_ptr + base[:, None] + 192 + (i // 16)[None, :], mask=m2, other=0)
        sc = sc.to(tl.int8, bitcast=True).to(tl.float32)
        return (d[:, None] * sc) * ((lo | (hi << 4)) - 32).to(tl.float32)

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, tab_ptr, out_ptr, M, N, K, row_bytes,
        QTYPE: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        n = pid * BN + tl.arange(0, BN)
        nmask = n < N
        row_off = n.to(tl.int64) * row_bytes
        m = tl.arange(0, BM)
        mmask = m < M
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for b in range(0, K // BK):
            if QTYPE == 8:  # GGMLQuantizationType values
                w = _q8_0(w_ptr, row_off, nmask, b, BK)
            elif QTYPE == 12:
                w = _q4_k(w_ptr, row_off, nmask, b, BK)
            elif QTYPE == 13:
                w = _q5_k(w_ptr, row_off, nmask, b, BK)
            elif QTYPE == 14:
                w = _q6_k(w_ptr, row_off, nmask, b, BK)
            else:
                w = _iq4_xs(w_ptr, tab_ptr, row_off, nmask, b, BK)
            k = b * BK + tl.arange(0, BK)
            x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=mmask[:, None], other=0.0).to(tl.float32)
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)  # [BM, BN]
        out = out_ptr + m[:, None] * N + n[None, :]
        tl.store(out, acc, mask=mmask[:, None] & nmask[None, :])


def triton_linear(x: torch.Tensor, data: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """x `[M, K]` (M <= 8) times the blocks `data` uint8 `[N, bytes_per_row]` transposed -> float32
    `[M, N]`, dequantized in registers."""
    if not triton_ok(qtype, x.shape[0]):
        raise ValueError(f"triton_linear: {qtype.name} x {x.shape[0]} rows is not a fused case")
    block, size = GGML_QUANT_SIZES[qtype]
    n, row_bytes = data.shape
    k = row_bytes // size * block
    x = x.contiguous()
    out = torch.empty(x.shape[0], n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, BLOCK_N),)
    table = lookup_table("kvalues", x.device)  # read by IQ4_XS only; every call passes it
    _gemv_kernel[grid](x, data, table, out, x.shape[0], n, k, row_bytes, int(qtype), block, MAX_ROWS, BLOCK_N)
    return out
