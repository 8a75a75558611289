"""Quantized weights: GGUF block decoding, the int4pack / int8pack formats and the drop-in modules.

References: `gguf.quants.dequantize` for every type (blocks made with `gguf.quants.quantize` for
Q8_0/Q4_0/Q4_1/Q5_0/Q5_1; K-quants are random valid blocks: every byte pattern is a block, only the
fp16 super-scales are set to sane values), and `F.linear` on the dequantized weights.

Tolerances, per weight (|dw| against the dequantized value):
- int4pack, symmetric types (Q4_0, Q5_0, Q8_0): <= 2^-8 |w| (the bfloat16 rounding of the block
  scale; the same bound as casting the dequantized weight to bfloat16);
- int4pack, asymmetric types (Q4_1, Q5_1, Q4_K, Q5_K): <= 2^-7 max|w| of the 32-group;
- int8pack (re-quantized rows): <= max|w_row| / 254 (+ the bfloat16 rounding up of the scale).
Matmul outputs equal x @ W_kernel^T up to the bfloat16 rounding of the output (2^-8 |y|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from gemma_mtp.quant import (
    BlockRows,
    Int4GroupWeight,
    Int8RowWeight,
    QuantEmbedding,
    QuantLinear,
    decode_codes,
)
from gemma_mtp.quant.codes import SYMMETRIC_TYPES

Q = GGMLQuantizationType
LEGACY = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]
INT4_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K]  # Q6_K: 16-wide groups
N, K = 200, 512  # 200 rows: not a multiple of the 64-row packing block


def random_k_blocks(qtype: GGMLQuantizationType, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random valid K-quant rows: random bytes, fp16 super-block scales in a trained model's range."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows, k // 256, size), dtype=np.uint8)
    scale_at = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}[qtype]
    for at in scale_at:
        d = (rng.random((rows, k // 256)) * 1e-3 + 1e-4).astype(np.float16)
        blocks[..., at : at + 2] = d[..., None].view(np.uint8).reshape(rows, k // 256, 2)
    return blocks.reshape(rows, -1)


def blocks_of(qtype: GGMLQuantizationType, rows: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    if qtype in K_QUANTS:
        return random_k_blocks(qtype, rows, k, seed)
    w = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32) * 0.05
    w[:, :32] *= 8  # groups of very different scale in one row
    return quantize(w, qtype)


def reference(data: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    return torch.from_numpy(dequantize(data, qtype).reshape(data.shape[0], -1))


def weight_bound(kind: str, qtype: GGMLQuantizationType, w: torch.Tensor) -> torch.Tensor:
    """The stated per-weight bound on |dw| (see the module docstring)."""
    if kind == "int8":
        return w.abs().amax(dim=1, keepdim=True).expand_as(w) / 254 * (1 + 2**-7)
    if qtype in SYMMETRIC_TYPES:
        return 2**-8 * w.abs()
    return 2**-7 * w.abs().view(w.shape[0], -1, 32).amax(-1, keepdim=True).expand(-1, -1, 32).reshape(w.shape)


@pytest.mark.parametrize("qtype", LEGACY + K_QUANTS, ids=lambda q: q.name)
def test_codes_decode_exactly_to_gguf_dequantize(qtype):
    data = blocks_of(qtype)
    assert torch.equal(torch.from_numpy(decode_codes(data, qtype).dequantize()), reference(data, qtype))


@pytest.mark.parametrize("qtype", INT4_TYPES, ids=lambda q: q.name)
def test_int4_weights_are_within_the_stated_bound(qtype):
    data = blocks_of(qtype)
    want = reference(data, qtype)
    got = Int4GroupWeight.from_blocks(data, qtype).dequantize()
    assert ((got - want).abs() <= weight_bound("int4", qtype, want) + 1e-12).all()


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q5_0], ids=lambda q: q.name)
def test_int4_symmetric_types_are_exact_when_block_scales_are_bfloat16(qtype):
    data = blocks_of(qtype).copy()
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = data.reshape(N, -1, size)
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)
    d_bf16 = torch.from_numpy(d).bfloat16().float().numpy().astype(np.float16)  # exact in fp16 too
    blocks[..., :2] = d_bf16.view(np.uint8).reshape(blocks[..., :2].shape)
    assert torch.equal(Int4GroupWeight.from_blocks(data, qtype).dequantize(), reference(data, qtype))


@pytest.mark.parametrize("qtype", LEGACY + K_QUANTS, ids=lambda q: q.name)
def test_int8_rows_are_within_the_stated_bound(qtype):
    data = blocks_of(qtype)
    want = reference(data, qtype)
    weight = Int8RowWeight.from_blocks(data, qtype)
    assert ((weight.dequantize() - want).abs() <= weight_bound("int8", qtype, want)).all()
    assert weight.max_error <= (1 + 2**-7) / 254


@pytest.mark.parametrize("kind", ["int4", "int8"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.Q5_0], ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8])
def test_quant_linear_is_f_linear_on_its_weights(kind, qtype, rows):
    data = blocks_of(qtype)
    weight = (Int4GroupWeight if kind == "int4" else Int8RowWeight).from_blocks(data, qtype)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)).bfloat16()
    got = QuantLinear(weight)(x).float()
    want = F.linear(x.float(), weight.dequantize())
    assert got.shape == (rows, N)
    assert ((got - want).abs() <= 2**-8 * want.abs() + 1e-5).all()
    # and against the dequantized GGUF weights: the per-weight bound, summed over a row
    w = reference(data, qtype)
    ref = F.linear(x.float(), w)
    bound = 2**-8 * ref.abs() + F.linear(x.float().abs(), weight_bound(kind, qtype, w)) + 1e-5
    assert ((got - ref).abs() <= bound).all()


def test_quant_linear_keeps_leading_dims_and_input_dtype():
    weight = Int4GroupWeight.from_blocks(blocks_of(Q.Q4_0), Q.Q4_0)
    x = torch.randn(2, 3, K)
    out = QuantLinear(weight)(x)
    assert out.shape == (2, 3, N) and out.dtype == torch.float32
    flat = QuantLinear(weight)(x.reshape(6, K).bfloat16()).float()
    assert torch.equal(out.reshape(6, N), flat)


def test_misaligned_activations_give_the_same_result():
    weight = Int8RowWeight.from_blocks(blocks_of(Q.Q8_0), Q.Q8_0)
    base = torch.randn(1, 8 * K + 8).bfloat16()
    x = base[0, 8 : 8 + K][None]  # a view 16 bytes into its storage
    assert x.data_ptr() % 64 != 0
    assert torch.equal(QuantLinear(weight)(x), QuantLinear(weight)(x.clone()))


def test_a_row_gives_the_same_result_in_any_batch():
    weight = Int4GroupWeight.from_blocks(blocks_of(Q.Q5_0), Q.Q5_0)
    x = torch.randn(37, K).bfloat16()
    whole = QuantLinear(weight)(x)
    assert all(torch.equal(QuantLinear(weight)(x[i : i + 1]), whole[i : i + 1]) for i in range(37))


@pytest.mark.parametrize("fmt", ["int4", "int8", "blocks"])
def test_quant_embedding_rows_are_the_kernel_weights_scaled(fmt):
    data = blocks_of(Q.Q8_0)
    table = {
        "int4": lambda: Int4GroupWeight.from_blocks(data, Q.Q8_0),
        "int8": lambda: Int8RowWeight.from_blocks(data, Q.Q8_0),
        "blocks": lambda: BlockRows(torch.from_numpy(data.copy()), Q.Q8_0, K),
    }[fmt]()
    emb = QuantEmbedding(table, scale=K**0.5, dtype=torch.bfloat16)
    ids = torch.tensor([[0, 199, 64], [63, 1, 0]])
    dense = table.dequantize().bfloat16()
    want = dense[ids] * torch.tensor(K**0.5, dtype=torch.bfloat16)
    assert torch.equal(emb(ids), want)
    if fmt == "blocks":
        assert torch.equal(table.dequantize(), reference(data, Q.Q8_0))


def test_tied_head_attend_is_the_matmul_with_the_table():
    table = Int4GroupWeight.from_blocks(blocks_of(Q.Q8_0), Q.Q8_0)
    emb = QuantEmbedding(table, scale=1.0, dtype=torch.bfloat16)
    hidden = torch.randn(1, 3, K).bfloat16()
    want = F.linear(hidden.float(), table.dequantize())
    got = emb.attend(hidden).float()
    assert got.shape == (1, 3, N)
    assert ((got - want).abs() <= 2**-8 * want.abs() + 1e-5).all()


# -- our native q8 kernel ---------------------------------------------------------------------------

ALL_CODE_TYPES = LEGACY + K_QUANTS


def _q8_reference(x: torch.Tensor, weight) -> torch.Tensor:
    """What the q8 kernel computes, in float64: x rounded to int8 per 32 (scale max|x| / 127,
    round half to even), exact integer dot products per group, then the scales and zeros."""
    m, k = x.shape
    xb = x.double().view(m, k // 32, 32)
    dx = xb.abs().amax(-1) / 127
    qx = torch.round(xb * torch.where(dx > 0, 1 / dx, torch.zeros_like(dx))[..., None])
    g = weight.group
    qw = weight.q.double().view(weight.out_features, k // g, g)
    qxg = qx.view(m, k // g, g)
    dots = torch.einsum("mgi,ngi->mng", qxg, qw)  # [M, N, K/G]
    dxg = dx.repeat_interleave(32 // g, dim=1) if g < 32 else dx
    y = (dots * weight.d.double()[None] * dxg[:, None, :]).sum(-1)
    if weight.z.numel():
        y = y + (dx * qx.sum(-1)) @ weight.z.double().T
    return y


@pytest.fixture(scope="module")
def q8():
    from native_required import native_or_skip

    native_or_skip()
    from gemma_mtp.quant.q8 import Q8BlockWeight

    return Q8BlockWeight


@pytest.mark.parametrize("qtype", ALL_CODE_TYPES, ids=lambda q: q.name)
def test_q8_weights_are_the_files_weights_exactly(q8, qtype):
    data = blocks_of(qtype)
    weight = q8.from_blocks(data, qtype)
    assert torch.equal(weight.dequantize(), reference(data, qtype))
    ids = torch.tensor([[0, 7], [199, 3]])
    assert torch.equal(weight.rows(ids), reference(data, qtype)[ids])


@pytest.mark.parametrize("qtype", ALL_CODE_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_q8_matmul_is_the_int8_activation_dot_product(q8, qtype, rows):
    data = blocks_of(qtype)
    weight = q8.from_blocks(data, qtype)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
    x[0, :32] = 0  # an all-zero activation block
    got = weight.linear(x)
    want = _q8_reference(x, weight)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # and close to the float matmul: activation rounding is <= 1/254 of each block's max
    exact = x.double() @ reference(data, qtype).double().T
    assert ((got.double() - exact).norm() / exact.norm()).item() < 0.01


def test_q8_rows_give_bit_identical_results_in_any_batch(q8):
    data = blocks_of(Q.Q4_K)
    weight = q8.from_blocks(data, Q.Q4_K)
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(3))
    together = weight.linear(x)
    for i in range(9):
        assert torch.equal(weight.linear(x[i : i + 1])[0], together[i])
    assert torch.equal(weight.linear(x[2:7]), together[2:7])


def test_q8_linear_module_keeps_leading_dims_and_dtype(q8):
    weight = q8.from_blocks(blocks_of(Q.Q6_K), Q.Q6_K)
    layer = QuantLinear(weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, K, dtype=dtype)
        y = layer(x)
        assert y.shape == (2, 3, N) and y.dtype == dtype
        assert torch.equal(y, layer(x.reshape(6, K)).reshape(2, 3, N))


def test_q8_kernel_rejects_bad_shapes(q8):
    weight = q8.from_blocks(blocks_of(Q.Q8_0), Q.Q8_0)
    with pytest.raises(RuntimeError, match="K mismatch"):
        weight.linear(torch.randn(1, K + 32))
