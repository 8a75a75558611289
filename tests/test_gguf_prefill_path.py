"""The gguf kernel on many rows of activations (prefill chunks): each tile of super-block weight rows is
decoded once for all the rows, and every row still gets the bits a call with that row alone gives.

References: float64 matmuls of the int8-rounded activations with `gguf.quants.dequantize`'s weights
(as in test_gguf_kernel.py), and the kernel's own few-row path, which decoding and verifying drafts
use (so prefill, plain decoding and speculative decoding agree bit for bit).
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from native_required import native_or_skip
from test_gguf_kernel import rounded
from test_gguf_lowbit_kernel import lowbit_blocks
from test_quant_kernels import ALL_CODE_TYPES, K, blocks_of, reference

from gemma_mtp.quant.blocks import GGUFBlockWeight, GGUFMultiWeight
from gemma_mtp.quant.policy import LOWBIT_TYPES

Q = GGMLQuantizationType
TYPES = [*ALL_CODE_TYPES, *sorted(LOWBIT_TYPES, key=int)]
M = 37  # above the tiled path's threshold of 8, not a multiple of 4


@pytest.fixture(scope="module")
def native():
    return native_or_skip()


def data_of(qtype, rows: int = 200, k: int = K, seed: int = 0):
    return lowbit_blocks(qtype, rows, k, seed) if qtype in LOWBIT_TYPES else blocks_of(qtype, rows, k, seed)


def few_rows_at_a_time(native, x, datas, types):
    return torch.cat([native.gguf_mm(x[i : i + 4], datas, types, True) for i in range(0, len(x), 4)])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_many_rows_get_the_bits_of_the_few_row_path(native, qtype):
    w = GGUFBlockWeight.from_blocks(data_of(qtype), qtype)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    got = w.linear(x)
    assert torch.equal(got, few_rows_at_a_time(native, x, [w.data], [int(qtype)]))
    assert torch.equal(got[5], w.linear(x[5:6])[0])


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.Q2_K, Q.IQ2_XXS], ids=lambda q: q.name)
def test_many_rows_are_the_int8_activation_dot_product(native, qtype):
    data = data_of(qtype)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2))
    want = rounded(x, qtype) @ reference(data, qtype).double().T
    got = native.gguf_mm(x, [GGUFBlockWeight.from_blocks(data, qtype).data], [int(qtype)], True)
    # float32 accumulation of exact int32 sub-block sums: ~K / 32 roundings of the running sum
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_matrices_longer_than_a_tile_and_fused_parts(native):
    """More weight rows than one decoded tile holds (the tile is ~512 KB), in parts of mixed types."""
    k = 256
    shapes = [(Q.Q4_K, 3000), (Q.Q5_0, 70), (Q.Q6_K, 9)]
    parts = [GGUFBlockWeight.from_blocks(data_of(t, rows=n, k=k), t) for t, n in shapes]
    fused = GGUFMultiWeight(parts)
    x = torch.randn(M, k, generator=torch.Generator().manual_seed(3))
    for repack in (False, True):  # the file layout, then the Q4_K part in the 8-row one
        if repack:
            assert parts[0].repack() and not parts[2].repack()  # 9 rows: not a multiple of 8
        got = fused.linear(x)
        assert torch.equal(got, torch.cat([p.linear(x) for p in parts], 1))
        assert torch.equal(got, few_rows_at_a_time(native, x, fused.kernel_data, fused.kernel_types))


def test_same_input_same_bits(native):
    w = GGUFBlockWeight.from_blocks(data_of(Q.Q4_K), Q.Q4_K)
    x = torch.randn(300, K, generator=torch.Generator().manual_seed(4))
    assert torch.equal(w.linear(x), w.linear(x.clone()))
