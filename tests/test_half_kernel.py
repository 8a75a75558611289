"""`native.half_mm` and `quant.half`: a GGUF file's BF16 / F16 matrices multiplied as stored.

The reference is float64 on the same widened weights (bfloat16 and float16 widen to float32
exactly). Also: the vector path's bits equal the portable path's, a row's bits do not depend on the
batch (verification stays lossless), and the loader keeps a BF16 linear layer as stored on a
float32 CPU load (Gemma 4's per_layer_model_proj) with the model's outputs those of the widened copy.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from native_required import native_or_skip

import gemma_mtp
from gemma_mtp.quant.half import HalfWeight
from gemma_mtp.quant.modules import QuantLinear
from gemma_mtp.tools.shaped_gguf import write_shaped
from gemma_mtp.tools.shapes import shape_configs


def _reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.double() @ w.double().T).float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K", [1536, 100, 31])
def test_products_are_float32_exact_up_to_accumulation(dtype, K) -> None:
    mod = native_or_skip()
    g = torch.Generator().manual_seed(K)
    w = torch.randn(77, K, generator=g).to(dtype)
    x = torch.randn(9, K, generator=g)
    got = mod.half_mm(x, w)
    ref = _reference(x, w.float())
    scale = (x.abs() @ w.float().abs().T).max()
    assert got.dtype == torch.float32 and got.shape == (9, 77)
    assert (got - ref).abs().max() <= 4e-7 * K**0.5 * scale
    assert torch.equal(got, mod.half_mm(x, w, vectorized=False))  # the portable path: the same bits


def test_a_rows_bits_do_not_depend_on_the_batch() -> None:
    mod = native_or_skip()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 256, generator=g).bfloat16()
    x = torch.randn(9, 256, generator=g)
    alone = torch.cat([mod.half_mm(x[i : i + 1], w) for i in range(9)])
    for m in range(1, 10):
        assert torch.equal(mod.half_mm(x[:m], w), alone[:m]), m
    assert torch.equal(mod.half_mm(x.bfloat16(), w), mod.half_mm(x.bfloat16().float(), w))  # any float dtype


def test_bad_weights_are_refused() -> None:
    mod = native_or_skip()
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        mod.half_mm(torch.randn(1, 8), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match=r"x \[M, K\] and w \[N, K\]"):
        mod.half_mm(torch.randn(1, 8), torch.randn(4, 9).bfloat16())


def test_weight_from_the_files_bytes() -> None:
    native_or_skip()
    w = torch.randn(5, 64).bfloat16()
    raw = w.view(torch.int16).numpy().view("uint8")  # [5, 128] bytes, as gguf-py maps BF16
    hw = HalfWeight.from_blocks(raw, GGMLQuantizationType.BF16)
    assert (hw.out_features, hw.in_features, hw.nbytes) == (5, 64, 640)
    assert torch.equal(hw.dequantize(), w.float())
    h16 = torch.randn(3, 32).half()
    assert torch.equal(
        HalfWeight.from_blocks(h16.numpy(), GGMLQuantizationType.F16).dequantize(), h16.float()
    )


@pytest.fixture(scope="module")
def e2b_small(tmp_path_factory):
    text, _, _ = shape_configs("e2b", layers=10, vocab=512)
    return write_shaped(tmp_path_factory.mktemp("e2b") / "t.gguf", text, "Q4_K_M", pool_blocks=64).path


def test_the_loader_keeps_a_bf16_matrix_as_stored(e2b_small) -> None:
    native_or_skip()
    kept = gemma_mtp.load(str(e2b_small), device="cpu", ctx_size=64)
    proj = kept.target.per_layer_model_projection
    assert isinstance(proj, QuantLinear) and proj.qweight.kind == "half"
    assert proj.qweight.data.dtype == torch.bfloat16
    assert any(n.startswith("BF16 x1 kept as stored") for n in kept.load_report.notices)
    widened = gemma_mtp.load(str(e2b_small), device="cpu", ctx_size=64, quant_kernels={"BF16": "float"})
    assert isinstance(widened.target.per_layer_model_projection, torch.nn.Linear)
    x = torch.randn(3, proj.in_features)
    ref = widened.target.per_layer_model_projection(x)
    assert torch.allclose(proj(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    tokens = torch.tensor([[2, 17, 99, 4, 250, 7]])

    def cache(engine):
        return engine.target.make_cache(batch_size=1, max_context=64, max_draft=4)

    with torch.no_grad():
        # one position: the widened copy's numbers up to float32 accumulation in the projection
        # (checked above to 1e-5); through 10 layers that can move an activation on an int8
        # rounding boundary to the next code, so the hidden states agree to the rounding's size
        a = kept.target.forward(tokens[:, :1], torch.zeros(1, 1, dtype=torch.long), cache(kept)).hidden
        b = widened.target.forward(tokens[:, :1], torch.zeros(1, 1, dtype=torch.long), cache(widened)).hidden
        assert ((a - b).norm() / b.norm()).item() < 0.02
        # six positions in one forward give the bits of six one-position steps (torch's float32
        # GEMM on the widened copy does not: its M = 6 and M = 1 sums differ, and the int8
        # rounding of the next layers' activations amplifies that; measured ~0.2 absolute here)
        c = cache(kept)
        together = kept.target.forward(tokens, torch.arange(6)[None], c).hidden
        c = cache(kept)
        steps = [kept.target.forward(tokens[:, i : i + 1], torch.tensor([[i]]), c).hidden for i in range(6)]
        assert torch.equal(together, torch.cat(steps, dim=1))
