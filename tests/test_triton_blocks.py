"""The fused Triton dequantize-GEMV/GEMM (`quant/triton_blocks.py`) on small shapes, on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported), against the
torch decoder (bit for bit gguf-py's weights, test_torch_blocks.py) and a float64 matmul.

Tolerance: both sides accumulate float32 products of the same exact weights, in different orders;
over K = 512 inputs that is a few ulps of the largest partial sum: |dy| <= 1e-5 max|y|.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

from gguf import GGMLQuantizationType  # noqa: E402
from test_torch_blocks import random_blocks, realistic_blocks, reference  # noqa: E402

from gemma_mtp.quant import torch_blocks, triton_blocks  # noqa: E402
from gemma_mtp.quant.torch_blocks import TorchBlockWeight  # noqa: E402

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


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_the_weights_decoded_in_registers_are_gguf_pys_exactly(qtype):
    """Products with unit vectors read the decoded weights out one column at a time: each sum is
    one weight plus zeros, so it is exact (any scale, subnormals included; +0 and -0 compare equal)."""
    data = random_blocks(qtype, rows=5, k=256, seed=int(qtype))
    want = reference(data, qtype)  # [5, 256]
    w = torch.from_numpy(data).to(DEVICE)
    eye = torch.eye(256)
    cols = [
        triton_blocks.triton_linear(eye[c : c + 8].to(DEVICE), w, qtype).cpu().T for c in range(0, 256, 8)
    ]
    got = torch.cat(cols, dim=1)
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {want.numel()} weights differ"


# ------------------------------------------------ which path `TorchBlockWeight.linear` takes


@pytest.fixture
def fused_here(monkeypatch):
    """`block_linear` tries the fused kernel on this test's device (the interpreter on a CPU), and
    no fallback has been announced yet."""
    monkeypatch.setattr(torch_blocks, "FUSED_DEVICES", frozenset({DEVICE}))
    monkeypatch.setattr(torch_blocks, "_ANNOUNCED", set())
    calls = []
    real = triton_blocks.triton_linear
    monkeypatch.setattr(triton_blocks, "triton_linear", lambda *a: calls.append(a[2]) or real(*a))
    return calls


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_a_block_weight_takes_the_fused_kernel_for_its_types(fused_here, qtype, recwarn):
    data = realistic_blocks(qtype, rows=21)
    weight = TorchBlockWeight.from_blocks(data, qtype).to(DEVICE)
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(4))
    want = x.double() @ reference(data, qtype).double().T
    got = weight.linear(x.to(DEVICE)).cpu()
    assert fused_here == [qtype] and not recwarn.list
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_more_rows_than_the_kernel_takes_run_the_torch_path_quietly(fused_here, recwarn):
    weight = TorchBlockWeight.from_blocks(realistic_blocks(Q.Q4_K, rows=21), Q.Q4_K).to(DEVICE)
    weight.linear(torch.ones(9, 512, device=DEVICE))
    assert fused_here == [] and not recwarn.list  # a prefill: the designed path, not a fallback


def test_a_type_without_a_kernel_says_once_that_it_falls_back(fused_here):
    data = realistic_blocks(Q.IQ2_XXS, rows=21)
    weight = TorchBlockWeight.from_blocks(data, Q.IQ2_XXS).to(DEVICE)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(5))
    with pytest.warns(
        RuntimeWarning, match="IQ2_XXS blocks on .*: no Triton kernel for IQ2_XXS.*torch-ops path"
    ):
        got = weight.linear(x.to(DEVICE)).cpu()
    assert fused_here == []
    want = torch.nn.functional.linear(x, reference(data, Q.IQ2_XXS))
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight.linear(x.to(DEVICE))  # said once per type, not per call


def test_without_triton_every_type_says_why(fused_here, monkeypatch):
    monkeypatch.setattr(triton_blocks, "WHY_UNAVAILABLE", "triton cannot be imported (test)")
    weight = TorchBlockWeight.from_blocks(realistic_blocks(Q.Q8_0, rows=3), Q.Q8_0).to(DEVICE)
    with pytest.warns(RuntimeWarning, match="Q8_0 blocks on .*: triton cannot be imported"):
        weight.linear(torch.ones(1, 512, device=DEVICE))
    assert fused_here == []


def test_the_load_notice_names_the_fused_types_and_the_fallbacks():
    line = triton_blocks.fused_notice({Q.Q4_K: 3, Q.IQ4_XS: 1, Q.Q5_0: 2})
    assert line.startswith("fused Triton dequant-matmul for 1-8 rows: Q4_K x3, IQ4_XS x1; ")
    assert "torch-ops path (tiles decoded, then matmul): Q5_0 x2 (no Triton kernel for Q5_0" in line
