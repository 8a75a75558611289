"""GGUF blocks for the pruned head's copy (`models/head.py`), made in torch, and the kernel checks
its bound rests on.

The encoders need not match ggml's search: any valid blocks do, because the bound reads back the
values the kernel decodes (`gguf_rows`). They only have to be fast (the 270M's 262,144 x 768 copy
in a few seconds) and close.
"""

from __future__ import annotations

import torch

__all__ = ["encode_q4_0", "encode_q4_k", "q4_k_part_max", "kernel_rounding_ok"]

Q8_0, Q4_0, Q4_K = 8, 2, 12  # GGML type ids


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def encode_q4_0(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [R, K] -> (Q4_0 bytes uint8 [R, K/32*18], the values they decode to, float32)."""
    r, k = values.shape
    blocks = values.view(r, k // 32, 32)
    signed_max = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    d = (signed_max / -8).half()
    df = d.float()
    q = (blocks * _inverse(df)).round().add(8).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    data = torch.cat([d.view(torch.uint8).view(r, k // 32, 2), packed], -1).reshape(r, -1)
    return data, ((q.float() - 8) * df).view(r, k)


def encode_q4_k(values: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """float32 [R, K] (K a multiple of 256) -> (Q4_K bytes uint8 [R, K/256*144], the scales).

    Per 32-input sub-block j of a super-block: w = d*sc_j*q - dmin*mn_j, q in 0..15 and sc, mn
    6-bit. The offset dmin*mn_j covers the sub-block's minimum (rounded up, so never above it) and
    d*sc_j its span over 15 steps (rounded up), so every value lies in its sub-block's range."""
    r, k = values.shape
    nsb = k // 256
    sub = values.view(r, nsb, 8, 32)
    offset = -sub.amin(-1).clamp(max=0)  # [r, nsb, 8] >= 0
    dmin = (offset.amax(-1) / 63).half().float()
    mn = (offset * _inverse(dmin)[..., None]).ceil().clamp(0, 63)
    base = -(dmin[..., None] * mn)  # the value of code 0, <= the sub-block's minimum
    span = (sub.amax(-1) - base).clamp(min=0) / 15
    d = (span.amax(-1) / 63).half().float()
    sc = (span * _inverse(d)[..., None]).ceil().clamp(0, 63)
    step = d[..., None] * sc
    q = ((sub - base[..., None]) * _inverse(step)[..., None]).round().clamp(0, 15).to(torch.uint8)
    sc8, mn8 = sc.to(torch.uint8), mn.to(torch.uint8)
    scales = torch.empty(r, nsb, 12, dtype=torch.uint8)  # ggml's get_scale_min_k4 layout
    scales[..., 0:4] = sc8[..., 0:4] | ((sc8[..., 4:8] >> 4) << 6)
    scales[..., 4:8] = mn8[..., 0:4] | ((mn8[..., 4:8] >> 4) << 6)
    scales[..., 8:12] = (sc8[..., 4:8] & 0xF) | ((mn8[..., 4:8] & 0xF) << 4)
    qs = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).reshape(r, nsb, 128)  # sub-blocks 2i, 2i+1 share bytes
    head = torch.stack([d.half(), dmin.half()], -1).view(torch.uint8)  # [r, nsb, 4]
    data = torch.cat([head, scales, qs], -1).reshape(r, -1)
    return data, {"d": d, "dmin": dmin, "sc": sc, "mn": mn}


def q4_k_part_max(scales: dict[str, torch.Tensor]) -> float:
    """The largest |part| of one weight in the kernel's split of a Q4_K weight, d*sc*q and
    dmin*mn with q <= 15: what the float32 rounding of its products scales with."""
    part = scales["d"][..., None].abs() * scales["sc"] * 15 + scales["dmin"][..., None].abs() * scales["mn"]
    return float(part.max()) if part.numel() else 0.0


def kernel_rounding_ok(ops) -> bool:
    """Whether gguf_mm rounds activations as the bound assumes: per 32 inputs for Q8_0 (an input
    of 0.3 beside a 100 in the next block keeps its own int8 step) and per at most 256 for Q4_K
    (an input of 0.3 in the next super-block keeps its own)."""
    x = torch.zeros(1, 512)
    x[0, 0] = 100.0
    checks = []
    for at, qtype in ((40, Q8_0), (300, Q4_K)):
        x_at = x.clone()
        x_at[0, at] = 0.3
        pick = torch.zeros(1, 512)
        pick[0, at] = 1.0
        if qtype == Q8_0:
            blocks = torch.zeros(1, 16, 34, dtype=torch.uint8)
            blocks[0, :, 1] = 0x3C  # scale 1.0
            blocks[0, at // 32, 2 + at % 32] = 1
            data = blocks.view(1, -1)
        else:
            data, _ = encode_q4_k(pick)
        out = float(ops.gguf_mm(x_at, [data], [qtype], True)[0, 0])
        checks.append(abs(out - 0.3) < 0.01)  # (the Q4_K weight is 1 within its rounding)
    return all(checks)
