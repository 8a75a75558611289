"""The gguf kernel on the low-bit types (Q2_K, Q3_K, IQ4_NL, IQ4_XS and the grid i-quants), read in place.

References no one here wrote: `gguf.quants.dequantize` (gguf-py 0.19.0) for the weights, bit for
bit, and float64 matmuls for the products (activations rounded to int8 per 32 as the kernel does,
see test_gguf_kernel.py). gguf-py cannot encode these types, so the blocks are random bytes with
finite fp16 scales in a trained model's range: every byte pattern is a valid block.

"""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from native_required import native_or_skip
from test_gguf_kernel import rounded
from test_quant_kernels import blocks_of

from gemma_mtp.quant.policy import LOWBIT_TYPES

Q = GGMLQuantizationType
TYPES = sorted(LOWBIT_TYPES, key=int)
N, K = 70, 512  # 70 rows: not a multiple of the kernel's tiles or of 4
ROOT = Path(__file__).resolve().parents[1]
FP16_AT = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.IQ1_M: ()}  # byte offsets of a block's fp16 scales


@pytest.fixture(scope="module")
def native():
    return native_or_skip()


def lowbit_blocks(qtype, rows: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    """Random valid rows of blocks: random bytes, fp16 scales of either sign in [1e-4, 1.1e-3]."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)

    def scales() -> np.ndarray:
        d = (rng.random((rows, k // block)) * 1e-3 + 1e-4) * rng.choice([-1, 1], (rows, k // block))
        return d.astype(np.float16)

    for at in FP16_AT.get(qtype, (0,)):
        blocks[..., at : at + 2] = scales()[..., None].view(np.uint8)
    if qtype == Q.IQ1_M:  # the fp16 scale is the top nibbles of the four scale words
        d = scales().view(np.uint16)
        words = blocks[..., 48:56].copy().view(np.uint16)
        for i in range(4):
            words[..., i] = (words[..., i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        blocks[..., 48:56] = words.view(np.uint8)
    return blocks.reshape(rows, -1)


def reference(data: np.ndarray, qtype) -> torch.Tensor:
    return torch.from_numpy(dequantize(data, qtype).reshape(data.shape[0], -1))


def weight_of(qtype, **kw):
    from gemma_mtp.quant.blocks import GGUFBlockWeight

    data = lowbit_blocks(qtype, **kw)
    return data, GGUFBlockWeight.from_blocks(data, qtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_the_committed_iq_tables_are_gguf_pys():
    spec = importlib.util.spec_from_file_location("make_iq_tables", ROOT / "scripts" / "make_iq_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.HEADER.read_text() == script.render(), "run python scripts/make_iq_tables.py"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_rows_are_gguf_pys_weights_bit_for_bit(native, qtype):
    data, weight = weight_of(qtype)
    want = reference(data, qtype)
    assert torch.equal(bits(weight.dequantize()), bits(want))
    ids = torch.tensor([[0, 7], [69, 3]])
    assert torch.equal(bits(weight.rows(ids)), bits(want[ids]))
    assert weight.nbytes == data.nbytes  # nothing but the blocks


def test_q2_k_per_16_mins_are_applied_per_16(native):
    """Activations whose two halves of each 32 differ: a per-32 zero would be off."""
    data, weight = weight_of(Q.Q2_K)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
    x.view(3, -1, 32)[..., :16] += 2.0
    want = rounded(x) @ reference(data, Q.Q2_K).double().T
    for vectorized in (True, False):
        got = native.gguf_mm(x, [weight.data], [int(Q.Q2_K)], vectorized).double()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_matmul_is_the_int8_activation_dot_product(native, qtype, rows):
    data, weight = weight_of(qtype)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
    x[0, :32] = 0  # an all-zero activation block
    w = reference(data, qtype).double()
    want = rounded(x) @ w.T
    for vectorized in (True, False):  # the AVX2 path and the portable one
        got = native.gguf_mm(x, [weight.data], [int(qtype)], vectorized)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    exact = x.double() @ w.T
    assert ((got.double() - exact).norm() / exact.norm()).item() < 0.01


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_each_row_of_activations_gets_the_same_bits_in_any_batch(native, qtype):
    _, weight = weight_of(qtype)
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(3))
    for vectorized in (True, False):
        together = native.gguf_mm(x, [weight.data], [int(qtype)], vectorized)
        for i in range(9):
            alone = native.gguf_mm(x[i : i + 1], [weight.data], [int(qtype)], vectorized)
            assert torch.equal(alone[0], together[i])
        assert torch.equal(native.gguf_mm(x[2:7], [weight.data], [int(qtype)], vectorized), together[2:7])


def test_one_call_over_matrices_of_mixed_types_equals_separate_calls(native):
    from gemma_mtp.quant.blocks import GGUFBlockWeight, GGUFMultiWeight

    mix = [(Q.IQ2_XXS, 40), (Q.Q2_K, 33), (Q.IQ4_NL, 7), (Q.IQ1_M, 50), (Q.Q3_K, 64), (Q.IQ3_S, 9)]
    parts = [weight_of(q, rows=r, seed=i)[1] for i, (q, r) in enumerate(mix)]
    parts.insert(2, GGUFBlockWeight.from_blocks(blocks_of(Q.Q6_K, rows=20), Q.Q6_K))  # and a type of before
    fused = GGUFMultiWeight(parts)
    for rows in (1, 4, 6):
        x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
        got = fused.linear(x)
        assert torch.equal(got, torch.cat([p.linear(x) for p in parts], dim=1))
        want = torch.cat([rounded(x, p.qtype) @ p.dequantize().double().T for p in parts], dim=1)
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_products_with_chosen_rows_are_the_full_products_at_those_rows(native, qtype):
    _, weight = weight_of(qtype)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(7))
    ids = torch.randint(0, N, (3, 40), generator=torch.Generator().manual_seed(8))
    assert torch.equal(weight.linear_rows(x, ids), weight.linear(x).gather(1, ids))


def test_kernel_overrides_of_low_bit_types_name_the_kernels_that_exist():
    from gemma_mtp.quant.plan import parse_kernels

    assert parse_kernels({"IQ2_XXS": "float"})[Q.IQ2_XXS] == "float"
    assert parse_kernels(None)[Q.Q3_K] == "gguf"
    with pytest.raises(ValueError, match="Q2_K has only the gguf kernel"):
        parse_kernels({"Q2_K": "int8"})


def _low_bit_file(tmp_path: Path) -> tuple[Path, Counter]:
    """A tiny Gemma 4 target (hidden 256) whose matrices are random blocks of the low-bit types:
    256-wide rows take the types in turn, narrower ones IQ4_NL."""
    pytest.importorskip("transformers")
    import hf_reference as ref

    from gemma_mtp.gguf.reader import open_gguf, tensor_shape
    from gemma_mtp.gguf.writer import Entry, write_gguf
    from gemma_mtp.tools.convert import convert_hf_to_gguf

    text = ref.gemma4_text_kwargs(layer_types=[ref.S, ref.F], hidden_size=256, intermediate_size=256)
    hf = ref._gemma4(tmp_path / "hf", 0, text, False).path
    gf = open_gguf(convert_hf_to_gguf(hf, tmp_path / "f32.gguf", out_type="F32"))
    wide = itertools.cycle(TYPES)
    chosen: Counter = Counter()
    tensors = []
    for seed, (name, t) in enumerate(gf.tensors.items()):
        shape = tensor_shape(t)
        if len(shape) == 2 and shape[1] % 32 == 0:
            qtype = next(wide) if shape[1] % 256 == 0 else Q.IQ4_NL
            chosen[qtype] += 1
            tensors.append((name, lowbit_blocks(qtype, rows=shape[0], k=shape[1], seed=seed), qtype))
        else:
            tensors.append((name, np.asarray(t.data), t.tensor_type))
    entries = [
        Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items() if k != "general.architecture"
    ]
    return write_gguf(tmp_path / "lowbit.gguf", gf.arch, entries, tensors), chosen


def test_a_file_of_low_bit_matrices_keeps_them_in_place_and_says_which_kernel(native, tmp_path):
    from test_gguf_helpers import target_logits

    from gemma_mtp.quant.blocks import GGUFBlockWeight
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    path, chosen = _low_bit_file(tmp_path)
    assert set(chosen) == set(TYPES)  # the file holds every low-bit type
    model, _, report = load_gguf_model(path)
    kept = Counter(m.qtype for m in model.modules() if isinstance(m, GGUFBlockWeight))
    assert kept == chosen  # every matrix kept quantized as the file's blocks, none dequantized
    for qtype, count in chosen.items():
        assert f"{qtype.name} x{count} kept quantized: native kernel on the GGUF blocks in place" in " ".join(
            report.notices
        )
    assert not any(n.startswith("dequantized") for n in report.notices)
    dense, _, dense_report = load_gguf_model(path, dtype="float32")  # the exact float reference
    assert any(n.startswith("dequantized") for n in dense_report.notices)
    tokens = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    got, want = target_logits(model, tokens), target_logits(dense, tokens)
    assert ((got - want).norm() / want.norm()).item() < 0.05  # int8 activations only


def test_lookup_tables_of_low_bit_types_keep_their_blocks_and_decode_exact_rows(native):
    from gemma_mtp.quant.modules import BlockRows
    from gemma_mtp.quant.plan import choose_kernel, parse_kernels

    data = lowbit_blocks(Q.IQ2_XS)
    assert choose_kernel("lookup", Q.IQ2_XS, data, parse_kernels(None)).kind == "blocks"
    table = BlockRows(torch.from_numpy(data), Q.IQ2_XS, K)
    ids = torch.tensor([[3, 0], [69, 3]])
    assert torch.equal(bits(table.rows(ids)), bits(reference(data, Q.IQ2_XS)[ids]))
