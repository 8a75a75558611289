"""GGUF blocks decoded by plain torch ops on any device: kind "torch".

The weight is the file's bytes as a uint8 tensor `[N, bytes_per_row]` (on the CPU a view of the
memory map; on a GPU a copy of the same bytes: device memory ≈ file size). `dequantize_blocks`
decodes every type our native kernel reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and the
low-bit Q2_K, Q3_K, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) with
gguf-py's float32 arithmetic in gguf-py's order, one elementwise op at a time, so the weights are
`gguf.quants.dequantize`'s bit for bit (the IQ grids are gguf-py's own tables). `TorchBlockWeight`
multiplies a tile of rows at a time: at most `TILE_BYTES` of float weights exist at once; on a GPU
1-8 rows of the types `triton_blocks.py` has a kernel for take it instead, and the other types
say once that they fall back. `TorchBlockExperts` is a MoE expert stack kept as blocks the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq
from torch import nn

from .blocks import BlockBytes, as_tensor

__all__ = [
    "TorchBlockWeight",
    "TorchBlockExperts",
    "TORCH_BLOCK_TYPES",
    "FUSED_DEVICES",
    "block_linear",
    "dequantize_blocks",
    "lookup_table",
    "torch_kernel_ok",
    "TILE_BYTES",
]

Q = GGMLQuantizationType
TILE_BYTES = 32 << 20  # float weights decoded at once by `linear`
# Devices where `block_linear` takes the fused Triton kernel (`triton_blocks.py`) for 1-8 rows of
# its types. The tests add "cpu" to run it through Triton's interpreter (TRITON_INTERPRET=1).
FUSED_DEVICES = frozenset({"cuda"})
_ANNOUNCED: set[GGMLQuantizationType] = set()  # types whose fallback from the fused kernel was said

_Decoder = Callable[[torch.Tensor], torch.Tensor]
_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def lookup_table(name: str, device: torch.device) -> torch.Tensor:
    """gguf-py's lookup tables (IQ grids float32 `[rows, cols]`, ksigns, kvalues) on `device`."""
    key = (name, device)
    if key not in _TABLES:
        if name == "ksigns":
            values = np.frombuffer(gq.IQ2_XXS.ksigns, dtype=np.uint8).astype(np.int32)
        elif name == "kvalues":
            values = np.array(gq.IQ4_NL.kvalues, dtype=np.float32)
        else:
            cls = getattr(gq, name)
            cls.init_grid()
            values = cls.grid.reshape(cls.grid_shape)
        _TABLES[key] = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    return _TABLES[key]


_SHIFTS: dict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = {}


def _shifts(device: torch.device, *values: int) -> torch.Tensor:
    """int32 `values` on `device`, made once: a decode step then copies nothing from the host
    (what a CUDA graph captures, `engine/graphs.py`)."""
    key = (device, values)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.tensor(values, dtype=torch.int32, device=device)
    return _SHIFTS[key]


def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 at byte `at` of each block, float32 `[n, 1]` (exact)."""
    return b[:, at : at + 2].contiguous().view(torch.float16).float()


def _words(b: torch.Tensor, at: int, count: int, width: int) -> torch.Tensor:
    """`count` little-endian unsigned words of `width` bytes from byte `at`, int64 `[n, count]`."""
    raw = b[:, at : at + count * width].to(torch.int64).view(b.shape[0], count, width)
    out = raw[..., 0]
    for i in range(1, width):
        out = out | (raw[..., i] << (8 * i))
    return out


def _nibbles(q: torch.Tensor, group: int) -> torch.Tensor:
    """Bytes `[n, m]` -> `[n, m // group, 2, group]`: each group's low nibbles, then its high ones."""
    q = q.view(q.shape[0], -1, 1, group) >> _shifts(q.device, 0, 4).view(1, 1, 2, 1)
    return q & 0x0F


def _bits(q: torch.Tensor, count: int, step: int, mask: int) -> torch.Tensor:
    """Values `[..., m]` -> `[..., m, count]`: fields of `step` bits, lowest first."""
    shifts = _shifts(q.device, *range(0, count * step, step))
    return (q.unsqueeze(-1) >> shifts) & mask


def _signs(bits: torch.Tensor) -> torch.Tensor:
    return torch.where(bits == 0, 1.0, -1.0)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d, qs = _f16(b, 0), b[:, 2:18].int()
    return d * (_nibbles(qs, 16).reshape(b.shape[0], 32) - 8).float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m, qs = _f16(b, 0), _f16(b, 2), b[:, 4:20].int()
    return (d * _nibbles(qs, 16).reshape(b.shape[0], 32).float()) + m


def _q5(b: torch.Tensor, at: int) -> torch.Tensor:
    """Q5_0/Q5_1's 5-bit codes: 32 high bits at `at`, then the nibbles."""
    qh = _words(b, at, 1, 4).view(-1, 1) >> torch.arange(32, device=b.device)
    ql = _nibbles(b[:, at + 4 : at + 20].int(), 16).reshape(b.shape[0], 32)
    return ql | ((qh & 1).int() << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_q5(b, 2) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    return (_f16(b, 0) * _q5(b, 4).float()) + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:34].view(torch.int8).float() * _f16(b, 0)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16].int(), b[:, 16:80].int()
    dl = (_f16(b, 80) * (scales & 0xF).float()).view(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).view(n, 16, 1)
    q = (qs.view(n, 2, 1, 32) >> _shifts(b.device, 0, 2, 4, 6).view(1, 1, 4, 1)) & 3
    return (dl * q.reshape(n, 16, 16).float() - ml).view(n, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales = b[:, :32].int(), b[:, 32:96].int(), b[:, 96:108].int()
    low = (scales[:, :8].view(n, 1, 8) >> _shifts(b.device, 0, 4).view(1, 2, 1)).reshape(n, 16)
    high = (scales[:, 8:].view(n, 1, 4) >> _shifts(b.device, 0, 2, 4, 6).view(1, 4, 1)).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 3) << 4)) - 32
    dl = (_f16(b, 108) * sc.float()).view(n, 16, 1)
    ql = (qs.view(n, 2, 1, 32) >> _shifts(b.device, 0, 2, 4, 6).view(1, 1, 4, 1)).reshape(n, 16, 16) & 3
    qh = (hmask.view(n, 1, 1, 32) >> torch.arange(8, device=b.device).view(1, 1, 8, 1)).reshape(n, 16, 16)
    q = ql - (((qh & 1) ^ 1) << 2)  # the offset of 4 applies where the hmask bit is clear
    return (dl * q.float()).view(n, 256)


def _k_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: the 8 six-bit scales and mins packed in 12 bytes."""
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    low = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scale, low


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16].int())
    d = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    dm = (_f16(b, 2) * mn.float()).view(n, 8, 1)
    return (d * q.float() - dm).view(n, 256)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _nibbles(b[:, 16:144].int(), 32).reshape(b.shape[0], 8, 32))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = _nibbles(b[:, 48:176].int(), 32).reshape(n, 8, 32)
    qh = (b[:, 16:48].int().view(n, 1, 1, 32) >> torch.arange(8, device=b.device).view(1, 1, 8, 1)) & 1
    return _k_affine(b, ql | (qh.reshape(n, 8, 32) << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    ql = _nibbles(b[:, :128].int(), 64).reshape(n, 8, 32)
    qh = (b[:, 128:192].int().view(n, 2, 1, 32) >> _shifts(b.device, 0, 2, 4, 6).view(1, 1, 4, 1)) & 3
    q = ((ql | (qh.reshape(n, 8, 32) << 4)) - 32).view(n, 16, 16)
    return (d * q.float()).view(n, 256)


def _iq4_nl(b: torch.Tensor) -> torch.Tensor:
    q = lookup_table("kvalues", b.device)[_nibbles(b[:, 2:18].int(), 16).reshape(b.shape[0], 32)]
    return _f16(b, 0) * q


def _iq4_xs(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    low = _nibbles(b[:, 4:8].int(), 1).reshape(n, 8)  # per byte: low nibble, then high
    high = _bits(_words(b, 2, 1, 2).view(n), 8, 2, 3)
    sc = (low | (high << 4).int()) - 32
    dl = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    q = lookup_table("kvalues", b.device)[_nibbles(b[:, 8:136].int(), 16).reshape(n, 8, 32)]
    return (dl * q).view(n, 256)


def _ksigns(index: torch.Tensor) -> torch.Tensor:
    """7-bit sign indices -> `[..., 8]` of +-1 (gguf-py's ksigns table)."""
    return _signs(_bits(lookup_table("ksigns", index.device)[index], 8, 1, 1))


def _half_db(b: torch.Tensor, ls: torch.Tensor, k: float) -> torch.Tensor:
    """`d * (0.5 + ls) * k` in gguf-py's order."""
    return _f16(b, 0) * (0.5 + ls.float()) * k


def _iq2_xxs(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    aux = _words(b, 2, 16, 4).view(n, 8, 2)
    db = _half_db(b, aux[..., 1] >> 28, 0.25).view(n, 8, 1, 1)
    signs = _ksigns(_bits(aux[..., 1], 4, 7, 0x7F))  # [n, 8, 4, 8]
    grid = lookup_table("IQ2_XXS", b.device)[b[:, 2:66].view(n, 8, 2, 4)[:, :, 0].long()]
    return (db * grid * signs).view(n, 256)


def _iq2_xs(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    qs = _words(b, 2, 32, 2)
    db = _half_db(b, _nibbles(b[:, 66:74].int(), 1).reshape(n, 16), 0.25).view(n, 16, 1, 1)
    signs = _ksigns(qs >> 9).view(n, 16, 2, 8)
    grid = lookup_table("IQ2_XS", b.device)[qs & 511].view(n, 16, 2, 8)
    return (db * grid * signs).view(n, 256)


def _iq2_s(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    db = _half_db(b, _nibbles(b[:, 74:82].int(), 1).reshape(n, 16), 0.25).view(n, 16, 1, 1)
    signs = _signs(_bits(b[:, 34:66].int(), 8, 1, 1)).view(n, 16, 2, 8)
    index = b[:, 2:34].long() | (_bits(b[:, 66:74].long(), 4, 2, 3).reshape(n, 32) << 8)
    grid = lookup_table("IQ2_S", b.device)[index].view(n, 16, 2, 8)
    return (db * grid * signs).view(n, 256)


def _iq3_xxs(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    aux = _words(b, 66, 8, 4)
    db = _half_db(b, aux >> 28, 0.5).view(n, 8, 1, 1)
    signs = _ksigns(_bits(aux, 4, 7, 0x7F))
    grid = lookup_table("IQ3_XXS", b.device)[b[:, 2:66].long()].view(n, 8, 4, 8)
    return (db * grid * signs).view(n, 256)


def _iq3_s(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ls = _nibbles(b[:, 106:110].int(), 1).reshape(n, 8)
    db = (_f16(b, 0) * (1 + 2 * ls).float()).view(n, 8, 1, 1)
    signs = _signs(_bits(b[:, 74:106].int(), 8, 1, 1)).view(n, 8, 4, 8)
    index = b[:, 2:66].long() | (_bits(b[:, 66:74].long(), 8, 1, 1).reshape(n, 64) << 8)
    grid = lookup_table("IQ3_S", b.device)[index].view(n, 8, 4, 8)
    return (db * grid * signs).view(n, 256)


def _delta(negative: torch.Tensor) -> torch.Tensor:
    return torch.where(negative == 0, 0.125, -0.125)


def _iq1_s(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    qh = _words(b, 34, 8, 2)
    dl = (_f16(b, 0) * (2 * ((qh >> 12) & 7) + 1).float()).view(n, 8, 1, 1)
    delta = _delta(qh & 0x8000).view(n, 8, 1, 1)
    index = b[:, 2:34].long() | (_bits(qh, 4, 3, 7).reshape(n, 32) << 8)
    grid = lookup_table("IQ1_S", b.device)[index].view(n, 8, 4, 8)
    return (dl * (grid + delta)).view(n, 256)


def _iq1_m(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc = _words(b, 48, 4, 2)
    bits = ((sc & 0xF000) >> _shifts(b.device, 12, 8, 4, 0)).sum(-1)  # fields disjoint: sum = or
    d = torch.stack([bits & 0xFF, bits >> 8], -1).to(torch.uint8).view(torch.float16).float()  # [n, 1]
    dl = (d * (2 * _bits(sc, 4, 3, 7).reshape(n, 16) + 1).float()).view(n, 8, 2, 1, 1)
    qh = _bits(b[:, 32:48].long(), 2, 4, 0xF).reshape(n, 32)
    index = b[:, :32].long() | ((qh & 7) << 8)
    delta = _delta(qh & 8).view(n, 8, 2, 2, 1)
    grid = lookup_table("IQ1_M", b.device)[index].view(n, 8, 2, 2, 8)
    return (dl * (grid + delta)).view(n, 256)


DECODERS: dict[GGMLQuantizationType, _Decoder] = {
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
    Q.IQ4_NL: _iq4_nl,
    Q.IQ4_XS: _iq4_xs,
    Q.IQ2_XXS: _iq2_xxs,
    Q.IQ2_XS: _iq2_xs,
    Q.IQ2_S: _iq2_s,
    Q.IQ3_XXS: _iq3_xxs,
    Q.IQ3_S: _iq3_s,
    Q.IQ1_S: _iq1_s,
    Q.IQ1_M: _iq1_m,
}
TORCH_BLOCK_TYPES = frozenset(DECODERS)


def torch_kernel_ok(qtype: GGMLQuantizationType, in_features: int) -> bool:
    return qtype in TORCH_BLOCK_TYPES and in_features % GGML_QUANT_SIZES[qtype][0] == 0


def dequantize_blocks(data: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """uint8 `[..., bytes_per_row]` (any device) -> float32 `[..., in_features]`, gguf-py's bits."""
    block, size = GGML_QUANT_SIZES[qtype]
    lead, width = data.shape[:-1], data.shape[-1]
    blocks = data.reshape(-1, size)
    if blocks.shape[0] == 0:
        return torch.empty(*lead, width // size * block, device=data.device)
    return DECODERS[qtype](blocks).view(*lead, width // size * block)


def _fused(qtype: GGMLQuantizationType, x: torch.Tensor) -> bool:
    """Whether `x` times `qtype` blocks takes the fused Triton kernel; on a device where it would,
    a type without one says so (a warning, once per type), never silently."""
    if x.device.type not in FUSED_DEVICES:
        return False
    from .triton_blocks import MAX_ROWS, why_not_fused

    why = why_not_fused(qtype)
    if why is not None:
        if qtype not in _ANNOUNCED:
            _ANNOUNCED.add(qtype)
            warnings.warn(
                f"{qtype.name} blocks on {x.device.type}: {why}; the torch-ops path decodes a tile "
                "of rows at a time and multiplies instead (slower)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return 1 <= x.shape[0] <= MAX_ROWS


def block_linear(x: torch.Tensor, data: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """x `[M, K]` times the blocks `data` uint8 `[N, bytes_per_row]` transposed -> `[M, N]` in x's
    dtype: the fused Triton kernel for 1-8 rows of its types on a GPU, else W decoded a tile of
    at most `TILE_BYTES` at a time and multiplied in x's dtype."""
    x = x.to(data.device)
    if _fused(qtype, x):
        from .triton_blocks import triton_linear

        return triton_linear(x, data, qtype).to(x.dtype)
    block, size = GGML_QUANT_SIZES[qtype]
    n_rows, in_features = data.shape[0], data.shape[1] // size * block
    step = max(1, TILE_BYTES // (4 * in_features))
    if step >= n_rows:
        return F.linear(x, dequantize_blocks(data, qtype).to(x.dtype))
    out = x.new_empty(x.shape[0], n_rows)
    for start in range(0, n_rows, step):
        tile = dequantize_blocks(data[start : start + step], qtype).to(x.dtype)
        out[:, start : start + step] = F.linear(x, tile)
    return out


class TorchBlockWeight(BlockBytes):
    """GGUF blocks (`data` uint8 `[N, bytes_per_row]`) with `GGUFBlockWeight`'s interface, on any
    device: products in the activations' dtype, a tile of at most `TILE_BYTES` of float32 weights
    decoded at a time, so a 262,144-row head never exists as floats."""

    kind = "torch"

    def __init__(self, data: torch.Tensor, qtype: GGMLQuantizationType, in_features: int) -> None:
        if qtype not in DECODERS:
            raise ValueError(f"{qtype.name}: no torch decoder for these blocks")
        super().__init__(data, qtype, in_features)

    @property
    def tile_rows(self) -> int:
        return max(1, TILE_BYTES // (4 * self.in_features))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` -> `[M, N]` in x's dtype: `x @ W.T` (`block_linear`)."""
        return block_linear(x, self.data, self.qtype)

    def linear_rows(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x `[M, K]`, ids `[M, n]` -> `[M, n]` float32: `linear(x)[m, ids[m]]` without the other rows."""
        w = self.rows(ids)  # [M, n, K]
        return torch.bmm(w, x.to(w.device, torch.float32).unsqueeze(-1)).squeeze(-1)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The weights of rows `ids` (any shape) as float32 `[*ids.shape, K]`, exactly."""
        flat = ids.reshape(-1).to(device=self.data.device, dtype=torch.long)
        return dequantize_blocks(self.data[flat], self.qtype).view(*ids.shape, self.in_features)

    def dequantize(self) -> torch.Tensor:
        out = torch.empty(self.out_features, self.in_features, device=self.data.device)
        for start in range(0, self.out_features, self.tile_rows):
            stop = start + self.tile_rows
            out[start:stop] = dequantize_blocks(self.data[start:stop], self.qtype)
        return out


class TorchBlockExperts(nn.Module):
    """A MoE expert stack kept as its GGUF blocks, `data` uint8 `[E, N, bytes_per_row]` (the
    file's 3-D tensor): `linear(x, e)` multiplies by expert e's matrix alone (`block_linear` on
    its rows: a view, nothing gathered), so only the experts the router picks are decoded."""

    kind = "torch"

    def __init__(self, data: torch.Tensor, qtype: GGMLQuantizationType, in_features: int) -> None:
        super().__init__()
        block, size = GGML_QUANT_SIZES[qtype]
        if qtype not in DECODERS:
            raise ValueError(f"{qtype.name}: no torch decoder for these blocks")
        if data.dim() != 3 or data.dtype != torch.uint8 or data.shape[2] != in_features // block * size:
            raise ValueError(
                f"{qtype.name} experts: uint8 [experts, rows, {in_features // block * size}] for "
                f"{in_features} inputs, got {data.dtype} {list(data.shape)}"
            )
        self.register_buffer("data", data)
        self.qtype = qtype
        self.n_experts, self.out_features, self.in_features = data.shape[0], data.shape[1], in_features

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType) -> TorchBlockExperts:
        block, size = GGML_QUANT_SIZES[qtype]
        return cls(as_tensor(data), qtype, data.shape[-1] // size * block)

    @property
    def shape(self) -> torch.Size:
        """The float stack's shape `[E, N, K]` (what code written for a 3-D parameter reads)."""
        return torch.Size((self.n_experts, self.out_features, self.in_features))

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def linear(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """x `[M, K]` -> `[M, N]` in x's dtype: x times expert `expert`'s matrix transposed."""
        return block_linear(x, self.data[expert], self.qtype)

    def dequantize(self) -> torch.Tensor:
        """The float32 stack `[E, N, K]`, exactly gguf-py's weights."""
        return torch.stack([dequantize_blocks(self.data[e], self.qtype) for e in range(self.n_experts)])
