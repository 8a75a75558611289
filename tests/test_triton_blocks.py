"""The fused Triton dequantize-GEMV/GEMM (`quant/triton_blocks.py`) on small shapes, on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported), against the
torch decoder (bit for bit gguf-py's weights, test_torch_blocks.py) and a float64 matmul.

Tolerance: both sides accumulate float32 products of the same exact weights, in different orders;
over K = 512 inputs that is a few ulps of the largest partial sum: |dy| <= 1e-5 max|y|.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

from gguf import GGMLQuantizationType  # noqa: E402
from test_torch_blocks import realistic_blocks, reference  # noqa: E402

from gemma_mtp.quant import triton_blocks  # noqa: E402

if triton_blocks.WHY_UNAVAILABLE is not None:
    pytest.skip(f"{triton_blocks.WHY_UNAVAILABLE}: install the dev extra", allow_module_level=True)

Q = GGMLQuantizationType
TYPES = sorted(triton_blocks.TRITON_TYPES, key=int)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_the_fused_kernel_is_x_times_gguf_pys_weights(qtype, rows):
    data = realistic_blocks(qtype, rows=21)  # 21 weight rows: a partial tile of 16
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
    want = x.double() @ reference(data, qtype).double().T
    got = triton_blocks.triton_linear(x.to(DEVICE), torch.from_numpy(data).to(DEVICE), qtype).cpu()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_bfloat16_activations_are_read_as_they_are():
    data = realistic_blocks(Q.Q4_K, rows=5)
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    want = x.double() @ reference(data, Q.Q4_K).double().T
    got = triton_blocks.triton_linear(x.to(DEVICE), torch.from_numpy(data).to(DEVICE), Q.Q4_K).cpu()
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_only_the_fused_cases_are_taken():
    assert triton_blocks.triton_ok(Q.Q8_0, 8) and not triton_blocks.triton_ok(Q.Q8_0, 9)
    assert not triton_blocks.triton_ok(Q.IQ2_XXS, 1)
    with pytest.raises(ValueError, match="IQ2_XXS x 1 rows is not a fused case"):
        triton_blocks.triton_linear(torch.zeros(1, 256), torch.zeros(1, 66, dtype=torch.uint8), Q.IQ2_XXS)
