"""Low-bit and IQ blocks that llama.cpp's own quantizer wrote, read by our kernel and our torch decoder.

tests/fixtures/llama_cpp/lowbit_blocks.gguf holds, unchanged, the first rows of one tensor of each
block type found in the embedded Gemma 3 270M re-quantized by the vendored `llama-quantize` to the
low-bit file types with an importance matrix (scripts/make_lowbit_fixtures.py; provenance under
"lowbit_blocks" in manifest.json). test_gguf_lowbit_kernel.py covers random bytes; these are the
blocks a user's file holds: real scales, real grid indices, real sign patterns.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from native_required import native_or_skip
from test_gguf_kernel import rounded

from gemma_mtp.quant.policy import LOWBIT_TYPES

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
FILE = FIXTURES / "lowbit_blocks.gguf"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["lowbit_blocks"]


def _tensors() -> dict[str, tuple[GGMLQuantizationType, np.ndarray]]:
    out = {}
    for t in GGUFReader(FILE).tensors:
        out[t.tensor_type.name] = (t.tensor_type, np.array(t.data))
    return out


TENSORS = _tensors()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_the_fixture_is_the_one_the_manifest_describes_and_holds_every_low_bit_type():
    assert hashlib.sha256(FILE.read_bytes()).hexdigest() == MANIFEST["file_sha256"]
    assert set(TENSORS) == {q.name for q in LOWBIT_TYPES} == set(MANIFEST["tensors"])
    assert all("llama-quantize" in c or "gemma-mtp imatrix" in c for c in MANIFEST["commands"])


@pytest.mark.parametrize("name", sorted(TENSORS))
def test_our_kernel_reads_llama_quantizes_blocks_as_gguf_py_does(name):
    from gemma_mtp.quant.blocks import GGUFBlockWeight

    native = native_or_skip()
    qtype, data = TENSORS[name]
    want = torch.from_numpy(dequantize(data, qtype).reshape(data.shape[0], -1))
    assert torch.isfinite(want).all() and want.abs().max() > 0
    weight = GGUFBlockWeight.from_blocks(data, qtype)
    assert torch.equal(_bits(weight.dequantize()), _bits(want))
    x = torch.randn(5, weight.in_features, generator=torch.Generator().manual_seed(0))
    ref = rounded(x, qtype) @ want.double().T
    for vectorized in (True, False):
        got = native.gguf_mm(x, [weight.data], [int(qtype)], vectorized).double()
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        alone = native.gguf_mm(x[3:4], [weight.data], [int(qtype)], vectorized).double()
        assert torch.equal(alone[0], got[3])


@pytest.mark.parametrize("name", sorted(TENSORS))
def test_the_portable_torch_decoder_reads_them_bit_for_bit_too(name):
    from gemma_mtp.quant.torch_blocks import TorchBlockWeight

    qtype, data = TENSORS[name]
    want = torch.from_numpy(dequantize(data, qtype).reshape(data.shape[0], -1))
    weight = TorchBlockWeight.from_blocks(data, qtype)
    assert torch.equal(_bits(weight.dequantize()), _bits(want))
