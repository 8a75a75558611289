"""Q4_K and Q5_0 repacked 8 rows at a time (`native/csrc/gguf_x8.h`, `GGUFBlockWeight.repack`).

The reference no one here wrote is `gguf.quants.dequantize` (through test_quant_kernels'
`reference`), times the activations rounded per 256 inputs as the kernel rounds them
(test_gguf_kernel's `rounded`): the repacked products must be that dot product up to float32
accumulation, the same bits on the vector and the portable path, and each row's bits must not
depend on the batch (what lossless speculation rests on).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from native_required import native_or_skip
from test_gguf_kernel import rounded
from test_quant_kernels import K, blocks_of, reference

from gemma_mtp.quant import blocks as qblocks
from gemma_mtp.quant.blocks import Q4_K_X8, Q5_0_X8, X8, GGUFBlockWeight, GGUFMultiWeight, release_pages

Q = GGMLQuantizationType
ROWS = 96  # 12 groups of 8
TYPES = pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_0], ids=lambda q: q.name)
# per 8 rows x one block (the file: 8 x 144 per 256 inputs, 8 x 22 per 32)
GROUP_BYTES = {Q.Q4_K: (256, 1184), Q.Q5_0: (32, 176)}


@pytest.fixture(scope="module")
def native():
    return native_or_skip()


def repacked(qtype=Q.Q4_K, rows: int = ROWS, k: int = K, seed: int = 0):
    data = blocks_of(qtype, rows=rows, k=k, seed=seed)
    weight = GGUFBlockWeight.from_blocks(data, qtype)
    assert weight.repack()
    return data, weight


@TYPES
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 40])
def test_repacked_products_are_the_int8_activation_dot_product(native, qtype, rows):
    data, weight = repacked(qtype)
    kind = X8 + int(qtype)
    assert weight.kernel_type == kind and weight.packed.shape == (
        ROWS // 8,
        K // GROUP_BYTES[qtype][0] * GROUP_BYTES[qtype][1],
    )
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
    x[0, :256] = 0  # an all-zero activation (super-)block
    want = rounded(x, qtype) @ reference(data, qtype).double().T
    got = {v: native.gguf_mm(x, [weight.packed], [kind], v) for v in (True, False)}
    assert torch.equal(got[True], got[False])  # the AVX2 loop and the portable one: the same bits
    assert torch.allclose(got[True].double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # the file layout's kernel computes the same sums; only float32 accumulation order differs
    plain = native.gguf_mm(x, [weight.data], [int(qtype)])
    assert torch.allclose(got[True], plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@TYPES
def test_each_row_gets_the_same_bits_in_any_batch(native, qtype):
    _, weight = repacked(qtype, k=1024)
    x = torch.randn(40, 1024, generator=torch.Generator().manual_seed(5))
    together = weight.linear(x)  # 40 rows: the prefill path of the file layout, the same loop here
    for i in (0, 3, 17, 39):
        assert torch.equal(weight.linear(x[i : i + 1])[0], together[i])
    assert torch.equal(weight.linear(x[2:9]), together[2:9])


def test_a_call_mixing_repacked_and_file_layouts_equals_separate_calls(native):
    _, packed = repacked(rows=64, seed=1)
    other = GGUFBlockWeight.from_blocks(blocks_of(Q.Q6_K, rows=70, seed=2), Q.Q6_K)  # 70: stays
    _, packed2 = repacked(Q.Q5_0, rows=16, seed=4)
    small = GGUFBlockWeight.from_blocks(blocks_of(Q.Q8_0, rows=24, seed=3), Q.Q8_0)
    assert not other.repack()
    fused = GGUFMultiWeight([other, packed, small, packed2])
    assert fused.kernel_types == [int(Q.Q6_K), Q4_K_X8, int(Q.Q8_0), Q5_0_X8]
    for rows in (1, 4, 12):
        x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
        assert torch.equal(
            fused.linear(x), torch.cat([p.linear(x) for p in (other, packed, small, packed2)], dim=1)
        )


def test_rows_and_dequantize_still_read_the_file_blocks(native):
    data, weight = repacked()
    assert torch.equal(weight.dequantize(), reference(data, Q.Q4_K))
    with pytest.raises(RuntimeError, match="repacked matrix has no rows"):
        native.gguf_rows(weight.packed, Q4_K_X8, torch.tensor([0]), K)
    with pytest.raises(RuntimeError, match="repacked matrix has no rows to gather"):
        native.gguf_mm_rows(torch.randn(1, K), weight.packed, Q4_K_X8, torch.tensor([[0]]))


def test_what_is_not_repacked_and_bad_inputs(native, monkeypatch):
    assert not GGUFBlockWeight.from_blocks(blocks_of(Q.Q4_K, rows=20), Q.Q4_K).repack()  # rows % 8
    assert not GGUFBlockWeight.from_blocks(blocks_of(Q.Q6_K, rows=16), Q.Q6_K).repack()  # no x8 layout
    monkeypatch.setenv(qblocks.REPACK_ENV, "0")
    weight = GGUFBlockWeight.from_blocks(blocks_of(Q.Q4_K, rows=16), Q.Q4_K)
    assert not weight.repack() and weight.kernel_data is weight.data
    monkeypatch.delenv(qblocks.REPACK_ENV)
    _, weight = repacked()
    with pytest.raises(RuntimeError, match="groups of 2368 bytes; 768 inputs take 3552"):
        native.gguf_mm(torch.randn(1, 768), [weight.packed], [Q4_K_X8])
    with pytest.raises(RuntimeError, match="not a multiple of 8"):
        native.gguf_repack(weight.data[:12], int(Q.Q4_K))
    with pytest.raises(RuntimeError, match="only Q4_K and Q5_0"):
        native.gguf_repack(weight.data, int(Q.Q6_K))


def test_released_pages_of_a_read_only_map_read_back_the_same(native, tmp_path):
    data = blocks_of(Q.Q4_K, rows=64, k=2048)
    path = tmp_path / "blocks.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r").reshape(data.shape)
    assert release_pages(mapped)
    assert np.array_equal(np.asarray(mapped), data)  # faulted back in from the file
    own = data.copy()
    assert not release_pages(own)  # our own memory: MADV_DONTNEED would zero it
    assert np.array_equal(own, data)
    writable = np.memmap(path, dtype=np.uint8, mode="r+")
    assert not release_pages(writable)


def test_a_loaded_gguf_model_multiplies_with_repacked_q4_k(native, tmp_path, monkeypatch):
    """The loader repacks a file's Q4_K and Q5_0 linear layers (never an embedding table, whose rows a
    head's candidates read); the model's logits stay those of the file layout up to rounding."""
    from asset_helpers import gemma3_270m

    import gemma_mtp

    path = gemma3_270m()
    engine = gemma_mtp.load(path, ctx_size=64, threads=2, device="cpu")
    kinds = {}
    for name, module in engine.target.named_modules():
        weight = getattr(module, "qweight", None)
        if isinstance(weight, GGUFBlockWeight):
            kinds.setdefault(weight.kernel_type, []).append(name)
    assert Q4_K_X8 in kinds and Q5_0_X8 in kinds
    assert not any("embed" in n for n in kinds[Q4_K_X8] + kinds[Q5_0_X8])
    tokens = torch.tensor([[2, 818, 5279, 529, 7001, 563]])

    def logits(e):
        cache = e.target.make_cache(batch_size=1, max_context=64)
        with torch.no_grad():
            return e.target.logits(e.target.forward(tokens, torch.arange(6)[None], cache).hidden)

    got = logits(engine)
    exact = logits(gemma_mtp.load(path, ctx_size=64, threads=2, device="cpu", dtype="float32"))
    monkeypatch.setenv(qblocks.REPACK_ENV, "0")
    plain = logits(gemma_mtp.load(path, ctx_size=64, threads=2, device="cpu"))

    # against the file's exact weights in float32, both layouts carry the int8 rounding of the
    # activations (about 4% of the logits after 18 layers, measured 3.5% and 4.4%); between them
    # ~1e-7 per product, which moves an activation on a rounding boundary to the next code
    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(plain, exact) < 0.06 and rel(got, exact) < 0.06
    assert (got[0].argmax(-1) == exact[0].argmax(-1)).float().mean().item() >= 5 / 6
