"""GGUF blocks decoded by torch ops (`quant/torch_blocks.py`), the portable path for any device.

Reference no one here wrote: `gguf.quants.dequantize` (gguf-py 0.19.0), bit for bit, for every
type the native kernel reads. The blocks are random bytes (every byte pattern is a valid block)
whose fp16 scales are random finite halves of any sign and magnitude, subnormals included.
Products are compared with `F.linear` on gguf-py's weights: float32 on both sides, so the only
difference is the order of the float32 sums (|dy| <= 1e-5 of the largest |y| here, K = 512).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from gemma_mtp.quant import torch_blocks
from gemma_mtp.quant.blocks import BLOCK_TYPES
from gemma_mtp.quant.torch_blocks import TORCH_BLOCK_TYPES, TorchBlockWeight, dequantize_blocks

Q = GGMLQuantizationType
TYPES = sorted(TORCH_BLOCK_TYPES, key=int)
N, K = 37, 512  # 37 rows: no tile size divides it
# byte offsets of each block's fp16 scales (ggml-common.h's block_* structs); IQ1_M spreads its one
FP16_AT = {Q.Q4_1: (0, 2), Q.Q5_1: (0, 2), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
FP16_AT |= {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.IQ1_M: ()}


def finite_halves(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random fp16 bit patterns of any sign and exponent except inf/nan, as uint16."""
    bits = rng.integers(0, 1 << 16, shape, dtype=np.uint16)
    exponent_all_ones = (bits & 0x7C00) == 0x7C00
    return np.where(exponent_all_ones, bits & 0xBFFF, bits).astype(np.uint16)


def trained_halves(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """fp16 scales of either sign in a trained model's range, [1e-4, 1.1e-3], as uint16."""
    d = (rng.random(shape) * 1e-3 + 1e-4) * rng.choice([-1, 1], shape)
    return d.astype(np.float16).view(np.uint16)


def random_blocks(
    qtype: GGMLQuantizationType, rows: int = N, k: int = K, seed: int = 0, halves=finite_halves
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
    for at in FP16_AT.get(qtype, (0,)):
        blocks[..., at : at + 2] = halves(rng, (rows, k // block))[..., None].view(np.uint8)
    if qtype == Q.IQ1_M:  # the fp16 scale is the top nibbles of the four scale words
        d = halves(rng, (rows, k // block))
        words = blocks[..., 48:56].copy().view(np.uint16)
        for i in range(4):
            words[..., i] = (words[..., i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        blocks[..., 48:56] = words.view(np.uint8)
    return blocks.reshape(rows, -1)


def realistic_blocks(qtype: GGMLQuantizationType, rows: int = N, seed: int = 0) -> np.ndarray:
    return random_blocks(qtype, rows, seed=seed, halves=trained_halves)


def reference(data: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    return torch.from_numpy(dequantize(data, qtype).reshape(data.shape[0], -1))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_every_type_the_native_kernel_reads_has_a_torch_decoder():
    assert TORCH_BLOCK_TYPES == BLOCK_TYPES


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("halves", [finite_halves, trained_halves], ids=["any_scale", "trained_scale"])
def test_decoding_is_gguf_pys_bit_for_bit(qtype, halves):
    data = random_blocks(qtype, halves=halves)
    want = reference(data, qtype)
    assert torch.isfinite(want).all()
    got = dequantize_blocks(torch.from_numpy(data), qtype)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_the_module_rows_and_dequantize_are_exact(qtype):
    data = random_blocks(qtype)
    want = reference(data, qtype)
    weight = TorchBlockWeight.from_blocks(data, qtype)
    assert (weight.out_features, weight.in_features) == (N, K)
    assert weight.nbytes == data.nbytes  # nothing but the blocks
    assert torch.equal(bits(weight.dequantize()), bits(want))
    ids = torch.tensor([[0, 7], [36, 3]])
    assert torch.equal(bits(weight.rows(ids)), bits(want[ids]))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.IQ2_XXS, Q.IQ1_M], ids=lambda q: q.name)
@pytest.mark.parametrize("tile_rows", [None, 1, 5])
def test_linear_is_x_times_the_weights_transposed_in_any_tiling(monkeypatch, qtype, tile_rows):
    data = realistic_blocks(qtype)
    if tile_rows is not None:
        monkeypatch.setattr(torch_blocks, "TILE_BYTES", tile_rows * 4 * K)
    weight = TorchBlockWeight.from_blocks(data, qtype)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
    want = F.linear(x, reference(data, qtype))
    got = weight.linear(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_linear_runs_in_the_activations_dtype():
    data = realistic_blocks(Q.Q4_K)
    weight = TorchBlockWeight.from_blocks(data, Q.Q4_K)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    got = weight.linear(x)
    assert got.dtype == torch.bfloat16
    want = F.linear(x, reference(data, Q.Q4_K).to(torch.bfloat16))
    assert torch.equal(got, want)  # the same bfloat16 weights, the same matmul


def test_linear_rows_are_the_chosen_columns_of_linear():
    data = realistic_blocks(Q.Q5_K)
    weight = TorchBlockWeight.from_blocks(data, Q.Q5_K)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[4, 0, 9], [1, 1, 20]])
    full = F.linear(x, reference(data, Q.Q5_K))
    got = weight.linear_rows(x, ids)
    assert torch.allclose(got, full.gather(1, ids), rtol=0, atol=1e-5 * full.abs().max().item())


def test_a_bounded_tile_is_decoded_at_a_time(monkeypatch):
    data = realistic_blocks(Q.Q8_0)
    monkeypatch.setattr(torch_blocks, "TILE_BYTES", 4 * 4 * K)  # 4 rows of float32
    seen = []
    decode = torch_blocks.DECODERS[Q.Q8_0]
    monkeypatch.setitem(torch_blocks.DECODERS, Q.Q8_0, lambda b: seen.append(b.shape[0]) or decode(b))
    TorchBlockWeight.from_blocks(data, Q.Q8_0).linear(torch.ones(1, K))
    blocks_per_row = K // 32
    assert max(seen) == 4 * blocks_per_row and sum(seen) == data.shape[0] * blocks_per_row


def test_a_row_width_that_does_not_match_the_type_is_refused():
    with pytest.raises(ValueError, match="Q4_K: 512 inputs take 288 bytes per row"):
        TorchBlockWeight(torch.zeros(2, 144, dtype=torch.uint8), Q.Q4_K, 512)


# ------------------------------------------------------------------------- through the loader

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
ALL_TORCH = {q.name: "torch" for q in TYPES}


def _load(name: str, **options):
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    return load_gguf_model(FIXTURES / f"{name}.gguf", dtype="float32", **options)


@pytest.mark.parametrize("name", ["e2b.q4_k_m", "e2b.q8_0"])
def test_a_gguf_target_on_the_torch_kernel_is_the_dequantized_model(name):
    """float32 activations over the file's exact weights: the same model as the dequantized
    float32 load but for the order of float32 sums (|dlogit| <= 1e-4 of the largest logit)."""
    from test_gguf_helpers import target_logits

    from gemma_mtp.quant.modules import describe

    model, _, report = _load(name, quantized=True, kernels=ALL_TORCH)
    exact, _, _ = _load(name, quantized=False)
    kinds = {describe(m) for m in model.modules()} - {None}
    # every block matrix on the torch kernel; the BF16 per_layer_model_proj stays as stored
    # (quant.half), which is the file's exact weights too
    assert kinds - {"half"} == {"torch"}, kinds
    assert any("kept quantized: torch ops on the GGUF blocks" in n for n in report.notices)
    tokens = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(5))
    got, want = target_logits(model, tokens), target_logits(exact, tokens)
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_greedy_generation_through_the_torch_kernel_is_the_dequantized_models():
    import gemma_mtp
    from gemma_mtp.sampling import SamplingParams

    path = FIXTURES / "e2b.q4_k_m.gguf"
    greedy = SamplingParams(temperature=0.0)
    ported = gemma_mtp.load(
        path, dtype="float32", device="cpu", ctx_size=64, quantized=True, quant_kernels=ALL_TORCH
    )
    exact = gemma_mtp.load(path, dtype="float32", device="cpu", ctx_size=64, quantized=False)
    for prompt in ([2, 10, 20, 30], [2, 7]):
        want = exact.generate(prompt, n_predict=12, sampling=greedy).token_ids
        assert ported.generate(prompt, n_predict=12, sampling=greedy).token_ids == want


def test_quant_kernels_torch_names_every_block_type():
    from gemma_mtp.cli.model_args import parse_quant_kernels

    assert parse_quant_kernels("torch") == ALL_TORCH
    assert parse_quant_kernels("torch,Q8_0=gguf")["Q8_0"] == "gguf"
