"""Group-wise int4 weights for `torch.ops.aten._weight_int4pack_mm_for_cpu` ("int4pack").

The kernel dequantizes each 4-bit value `a` of group g as `(a - 8) * s[g, n] + z[g, n]` (bfloat16
scale and zero per group of 32 inputs, float32 arithmetic) and accumulates in float32 with
bfloat16 activations, reading each weight once for up to 4 rows of x.

GGUF codes wider than 4 bits are split into base-16 digits, each digit a plane of K inputs with
scale `16**i * s`; the planes are laid side by side along K (K' = digits * K) and x is repeated to
match, so one kernel call sums every plane in float32. With `w = s * code + z` from `codes.py`:
- the digit scales are `s` times powers of two: exact when `s` is a bfloat16 value; otherwise the
  rounding of `s` to bfloat16 scales the whole group by at most 1 ± 2^-8 (the same relative bound
  as casting the dequantized weight to bfloat16);
- the zeros are placed so that symmetric types (Q4_0, Q5_0, Q8_0: z = -2^p * s) need only powers
  of two times `s` (exact as above); asymmetric types (Q4_1, Q5_1, Q4_K, Q5_K) round `z + 8 s` to
  bfloat16: |Δw| <= 2^-8 * |z + 8 s| more, a fraction of the group's range.
`Int4GroupWeight.max_error` records the largest |Δw| / max|w_group| seen at conversion.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from .codes import GroupCodes, decode_codes

__all__ = ["Int4GroupWeight", "int4_kernel_ok", "HAVE_INT4_KERNEL"]

# torch >= 2.5 names the CPU variants `*_for_cpu`; older builds have no usable CPU int4pack
HAVE_INT4_KERNEL = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
    torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
)

GROUP = 32
ROW_ALIGN = 64  # rows are padded to a multiple of the widest packing block (AVX-512: 64)
ROWS_PER_CHUNK = 2048


def int4_kernel_ok(gc: GroupCodes) -> bool:
    return gc.group % GROUP == 0 and gc.bits <= 8 and gc.codes.shape[1] % GROUP == 0


def _pack(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


@functools.cache
def _packed_layout() -> tuple[int, torch.Tensor]:
    """How this CPU build packs: (rows per block, nibble offset of each row within a k-step).

    The packed order depends on the CPU capability torch dispatches to (AVX2: 32-row blocks,
    AVX-512: 64 with lanes paired), so it is learned from probes and checked on random codes;
    only `rows()` (embedding lookups) and `dequantize()` need it; matmuls never unpack.
    """
    n, k = 64, 64
    rows = torch.arange(n)[:, None].expand(n, k)
    cols = torch.arange(k)[None, :].expand(n, k)
    seen_row = torch.zeros(n * k, dtype=torch.long)
    seen_col = torch.zeros(n * k, dtype=torch.long)
    for shift in (0, 4):
        seen_row += _nibbles(_pack((rows >> shift) & 15)) << shift
        seen_col += _nibbles(_pack((cols >> shift) & 15)) << shift
    where = torch.empty(n, k, dtype=torch.long)
    where[seen_row, seen_col] = torch.arange(n * k)
    for block in (64, 32, 16):
        offsets = where[:block, 0]
        guess = _positions(torch.arange(n), k, block, offsets)[:, :k]
        if torch.equal(guess, where):
            check = torch.randint(0, 16, (128, 96), generator=torch.Generator().manual_seed(0))
            got = _nibbles(_pack(check))[_positions(torch.arange(128), 96, block, offsets)]
            if torch.equal(got, check):
                return block, offsets
    raise RuntimeError("unrecognized int4pack layout")  # never silent: rows() cannot decode


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    flat = packed.reshape(-1).long()
    return torch.stack([flat & 15, flat >> 4], dim=-1).reshape(-1)


def _positions(ids: torch.Tensor, k: int, block: int, offsets: torch.Tensor) -> torch.Tensor:
    """Nibble index of (row, column) for rows `ids` `[T]` -> `[T, k]`."""
    base = (ids // block) * (k * block) + offsets[ids % block]
    return base[:, None] + torch.arange(k)[None, :] * block


def _digit_zeros(gc: GroupCodes, scale: np.ndarray, digits: int) -> list[np.ndarray]:
    """Per-digit zeros whose sum with the kernel's `-8 * scale_i` terms gives `gc.zero`."""
    offset = gc.symmetric_offset
    if digits == 1:
        return [gc.zero + 8 * scale]
    if digits == 2 and offset is not None and offset in (16, 128):
        # need z0 + z1 = (136 - offset) * s: 120 s = 128 s - 8 s; 8 s = 0 + 8 s (powers of two)
        z1 = 128 * scale if offset == 16 else np.zeros_like(scale)
        return [(136 - offset) * scale - z1, z1]
    return [gc.zero + 8 * scale] + [8 * 16**i * scale for i in range(1, digits)]


class Int4GroupWeight(nn.Module):
    """`packed` uint8 `[N', D*K/2]` (int4pack order), `scale_zero` bfloat16 `[D*K/32, N', 2]`."""

    kind = "int4"

    def __init__(
        self, packed: torch.Tensor, scale_zero: torch.Tensor, shape: tuple[int, int], digits: int
    ) -> None:
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scale_zero", scale_zero)
        self.out_features, self.in_features = shape
        self.digits = digits
        self.max_error = 0.0

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType) -> Int4GroupWeight:
        """Raw GGUF rows (`[N, bytes_per_row]` uint8) -> packed weight, a chunk of rows at a time."""
        n = data.shape[0]
        first = decode_codes(data[:1], qtype)
        if not int4_kernel_ok(first):
            raise ValueError(f"int4pack needs groups of {GROUP} and <= 8 bits ({qtype.name})")
        k, digits = first.codes.shape[1], (first.bits + 3) // 4
        n_pad = -(-n // ROW_ALIGN) * ROW_ALIGN
        packed = torch.empty(n_pad, digits * k // 2, dtype=torch.uint8)
        scale_zero = torch.zeros(digits * k // GROUP, n_pad, 2, dtype=torch.bfloat16)
        for start in range(0, n_pad, ROWS_PER_CHUNK):
            stop = min(start + ROWS_PER_CHUNK, n_pad)
            planes = torch.zeros(stop - start, digits * k, dtype=torch.int32)
            if start < n:
                gc = decode_codes(data[start:stop], qtype)
                codes = torch.from_numpy(gc.codes).to(torch.int32)
                per = gc.group // GROUP  # kernel groups per code group
                zeros = _digit_zeros(gc, gc.scale, digits)
                for i in range(digits):
                    planes[: codes.shape[0], i * k : (i + 1) * k] = (codes >> (4 * i)) & 15
                    groups = slice(i * k // GROUP, (i + 1) * k // GROUP)
                    s = torch.from_numpy(np.repeat(16**i * gc.scale, per, axis=1)).T
                    z = torch.from_numpy(np.repeat(zeros[i], per, axis=1)).T
                    scale_zero[groups, start : start + codes.shape[0]] = torch.stack([s, z], -1).to(
                        torch.bfloat16
                    )
            packed[start:stop] = _pack(planes)
        out = cls(packed, scale_zero, (n, k), digits)
        out.max_error = _max_error(out, data, qtype)
        return out

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` bfloat16 contiguous -> `[M, N]` bfloat16."""
        if self.digits > 1:
            x = x.repeat(1, self.digits)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scale_zero)
        return y if y.shape[1] == self.out_features else y[:, : self.out_features]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The kernel's weights for rows `ids` (any shape) as float32 `[*ids.shape, K]`."""
        block, offsets = _packed_layout()
        flat = ids.reshape(-1)
        where = _positions(flat, self.digits * self.in_features, block, offsets)  # nibble indices
        byte = self.packed.reshape(-1)[where // 2].long()
        return self._combine((byte >> (4 * (where % 2))) & 15, flat).view(*ids.shape, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """All kernel weights as float32 `[N, K]` (unpacked in uint8, then one affine per group)."""
        block, offsets = _packed_layout()
        n_pad, kk = self.packed.shape[0], 2 * self.packed.shape[1]
        byte = self.packed.view(n_pad // block, kk, block // 2)
        nib = torch.stack([byte & 15, byte >> 4], dim=-1).view(n_pad // block, kk, block)
        codes = nib.index_select(2, offsets).transpose(1, 2).reshape(n_pad, kk)[: self.out_features]
        n, groups = self.out_features, kk // GROUP
        sz = self.scale_zero[:, :n].float()  # [D*K/32, N, 2]
        s, z = sz[..., 0].T[..., None], sz[..., 1].T[..., None]  # [N, D*K/32, 1]
        w = torch.addcmul(z - 8 * s, codes.view(n, groups, GROUP).float(), s)
        return w.reshape(n, self.digits, self.in_features).sum(dim=1)

    def _combine(self, codes: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """4-bit codes `[T, D*K]` of rows `ids` -> weights `[T, K]`: sum over digits of (a - 8) s + z."""
        sz = self.scale_zero[:, ids, :].float()  # [D*K/32, T, 2]
        s = sz[..., 0].T.repeat_interleave(GROUP, dim=1)
        z = sz[..., 1].T.repeat_interleave(GROUP, dim=1)
        w = (codes.float() - 8) * s + z
        return w.view(-1, self.digits, self.in_features).sum(dim=1)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + 2 * self.scale_zero.numel()


def _max_error(weight: Int4GroupWeight, data: np.ndarray, qtype: GGMLQuantizationType) -> float:
    """Largest |Δw| / max|w_group| over a sample of rows (all rows would double the load time)."""
    n = data.shape[0]
    ids = torch.linspace(0, n - 1, min(n, 512)).long().unique()
    gc = decode_codes(data[ids.numpy()], qtype)
    want = torch.from_numpy(gc.dequantize()).view(len(ids), -1, gc.group)
    got = weight.rows(ids).view_as(want)
    amax = want.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30)
    return float(((got - want).abs() / amax).max())
