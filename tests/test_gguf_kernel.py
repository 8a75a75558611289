"""Our native kernel on GGUF blocks read in place (`quant/blocks.py`, `native/csrc/gguf_mm.cpp`).

References no one here wrote: `gguf.quants.dequantize` for the weights (every row decoded by the
kernel must equal it bit for bit) and float64 matmuls for the products. The kernel rounds each
activation row to int8 per 32 inputs (scale max|x| / 127, half to even), as llama.cpp does for its
Q8_0-type dot products, and per 256 inputs for Q4_K / Q5_K / Q6_K (llama.cpp's Q8_K); the
reference below applies the same rounding, so the only differences left are float32 accumulation
(<= 1e-5 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from native_required import native_or_skip
from test_quant_kernels import ALL_CODE_TYPES, K, N, blocks_of, reference

from gemma_mtp.quant import QuantLinear

Q = GGMLQuantizationType


@pytest.fixture(scope="module")
def native():
    return native_or_skip()


def weight_of(qtype, **kw):
    from gemma_mtp.quant.blocks import GGUFBlockWeight

    data = blocks_of(qtype, **kw)
    return data, GGUFBlockWeight.from_blocks(data, qtype)


PER_256 = (Q.Q4_K, Q.Q5_K, Q.Q6_K)  # the types whose products take activations rounded per 256


def rounded(x: torch.Tensor, qtype=None) -> torch.Tensor:
    """x as the kernel sees it for weights of `qtype`: int8 per 32 inputs (per 256 for PER_256)
    with scale max|x| / 127 and codes round(x * (1 / scale)) half to even, computed in float32 as
    the kernel does, returned in float64."""
    m, k = x.shape
    width = 256 if qtype in PER_256 else 32
    xb = x.float().view(m, k // width, width)
    dx = xb.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(dx > 0, 1 / dx, torch.zeros_like(dx))
    return (torch.round(xb * inv).double() * dx.double()).view(m, k)


@pytest.mark.parametrize("qtype", ALL_CODE_TYPES, ids=lambda q: q.name)
def test_rows_are_the_files_weights_exactly(native, qtype):
    data, weight = weight_of(qtype)
    assert torch.equal(weight.dequantize(), reference(data, qtype))
    ids = torch.tensor([[0, 7], [199, 3]])
    assert torch.equal(weight.rows(ids), reference(data, qtype)[ids])
    assert weight.nbytes == data.nbytes  # nothing but the blocks


@pytest.mark.parametrize("qtype", ALL_CODE_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_matmul_is_the_int8_activation_dot_product(native, qtype, rows):
    data, weight = weight_of(qtype)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
    x[0, :32] = 0  # an all-zero activation block
    want = rounded(x, qtype) @ reference(data, qtype).double().T
    for vectorized in (True, False):  # the AVX2 path and the portable one
        got = native.gguf_mm(x, [weight.data], [int(qtype)], vectorized)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    exact = x.double() @ reference(data, qtype).double().T
    # the cost of rounding activations to int8: ~0.5% relative per 32 inputs; per 256 (llama.cpp's
    # Q8_K, whose scale follows the largest of 256 inputs) ~1%
    bound = 0.02 if qtype in PER_256 else 0.01
    assert ((got.double() - exact).norm() / exact.norm()).item() < bound


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 9])
def test_activations_on_exact_ties_round_half_to_even(native, qtype, rows):
    """Every 32 inputs hold a 127, so the scale is 1 and x * (1 / scale) is x: inputs at k + 0.5
    are exact ties, which round to the even code (not away from zero). A kernel rounding them
    any other way is off by one code on half the inputs."""
    data, weight = weight_of(qtype)
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-126, 126, (rows, K), generator=g).float() + 0.5
    x[:, ::32] = 127.0
    x[:, 1::32] *= -1
    want = rounded(x, qtype) @ reference(data, qtype).double().T
    assert not torch.equal(rounded(x, qtype), x.double())  # ties did move
    got = native.gguf_mm(x, [weight.data], [int(qtype)], True)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("qtype", ALL_CODE_TYPES, ids=lambda q: q.name)
def test_each_row_of_activations_gets_the_same_bits_in_any_batch(native, qtype):
    """What lossless greedy speculation rests on: a verify forward over several positions gives each
    the bits a one-position forward gives."""
    _, weight = weight_of(qtype)
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(3))
    together = weight.linear(x)
    for i in range(9):
        assert torch.equal(weight.linear(x[i : i + 1])[0], together[i])
    assert torch.equal(weight.linear(x[2:7]), together[2:7])


def test_one_call_over_several_matrices_of_mixed_types_equals_separate_calls(native):
    parts = [
        weight_of(q, rows=r, seed=i)[1] for i, (q, r) in enumerate([(Q.Q5_0, 96), (Q.Q8_0, 32), (Q.Q6_K, 70)])
    ]
    from gemma_mtp.quant.blocks import GGUFMultiWeight

    fused = GGUFMultiWeight(parts)
    for rows in (1, 4, 6):
        x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
        assert torch.equal(fused.linear(x), torch.cat([p.linear(x) for p in parts], dim=1))


def test_row_views_of_a_matrix_work_in_place(native):
    data, weight = weight_of(Q.Q4_K)
    x = torch.randn(2, K)
    view = weight.data[50:120]  # a slice of rows: same bytes, no copy
    assert view.data_ptr() == weight.data.data_ptr() + 50 * weight.data.stride(0)
    assert torch.equal(native.gguf_mm(x, [view], [int(Q.Q4_K)]), weight.linear(x)[:, 50:120])


def test_widths_that_are_not_whole_super_blocks(native):
    from gemma_mtp.quant.blocks import gguf_kernel_ok

    data, weight = weight_of(Q.Q8_0, k=640)  # 20 blocks of 32
    x = torch.randn(3, 640)
    want = rounded(x) @ reference(data, Q.Q8_0).double().T
    assert torch.allclose(weight.linear(x).double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert gguf_kernel_ok(Q.Q5_0, 640) and not gguf_kernel_ok(Q.Q4_K, 640)
    assert not gguf_kernel_ok(Q.TQ2_0, 512)


def test_bad_inputs_are_refused_with_the_reason(native):
    data, weight = weight_of(Q.Q8_0)
    with pytest.raises(RuntimeError, match="rows of 544 bytes"):
        native.gguf_mm(torch.randn(1, K + 32), [weight.data], [int(Q.Q8_0)])
    with pytest.raises(RuntimeError, match="unsupported GGUF type 35"):
        native.gguf_mm(torch.randn(1, K), [weight.data], [int(Q.TQ2_0)])
    with pytest.raises(RuntimeError, match="out of range"):
        native.gguf_rows(weight.data, int(Q.Q8_0), torch.tensor([N]), K)
    with pytest.raises(ValueError, match="bytes per row"):
        from gemma_mtp.quant.blocks import GGUFBlockWeight

        GGUFBlockWeight(weight.data[:, :-2], Q.Q8_0, K)


def test_linear_module_keeps_leading_dims_and_dtype(native):
    _, weight = weight_of(Q.Q5_0)
    layer = QuantLinear(weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, K, dtype=dtype)
        y = layer(x)
        assert y.shape == (2, 3, N) and y.dtype == dtype
        assert torch.equal(y, layer(x.reshape(6, K)).reshape(2, 3, N))


def test_blocks_from_a_read_only_mapping_are_used_without_a_copy(native, tmp_path):
    data = blocks_of(Q.Q6_K)
    path = tmp_path / "blocks.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r").reshape(data.shape)
    from gemma_mtp.quant.blocks import GGUFBlockWeight

    weight = GGUFBlockWeight.from_blocks(mapped, Q.Q6_K)
    assert weight.data.data_ptr() == mapped.ctypes.data
    assert torch.equal(weight.dequantize(), reference(data, Q.Q6_K))
    assert GGML_QUANT_SIZES[Q.Q6_K] == (256, 210)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_products_with_chosen_rows_are_the_full_products_at_those_rows(native, qtype):
    """A centroid head's candidates: each row of x against its own weight rows, bit for bit what
    the full matmul gives there."""
    _, weight = weight_of(qtype)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(7))
    ids = torch.randint(0, N, (3, 50), generator=torch.Generator().manual_seed(8))
    full = weight.linear(x)
    assert torch.equal(weight.linear_rows(x, ids), full.gather(1, ids))
    with pytest.raises(RuntimeError, match="out of range"):
        weight.linear_rows(x, torch.full((3, 2), N))
