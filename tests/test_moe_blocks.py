"""MoE expert stacks kept as GGUF blocks (`quant.torch_blocks.TorchBlockExperts`, set with
`models.moe.Experts.keep_blocks`) against the same experts dequantized into float parameters.

Reference: `gguf.quants.dequantize` (gguf-py) of the same blocks. On the torch-ops path an
expert's matrix is decoded whole (gguf-py's bits) and multiplied by the same `F.linear`, so the
outputs are equal bit for bit; through the fused Triton kernel only the float32 sums reorder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from test_gguf_helpers import target_logits
from test_torch_blocks import random_blocks, trained_halves

from gemma_mtp.models.moe import Experts
from gemma_mtp.quant.torch_blocks import TorchBlockExperts
from gemma_mtp.weights.gguf_loader import load_gguf_model

Q = GGMLQuantizationType
MOE = Path(__file__).parent / "fixtures" / "llama_cpp" / "moe.f32.gguf"
WIDTH = 256  # hidden and expert width of the unit tests: one super-block per row


def block_stack(qtype, experts: int, rows: int, k: int, seed: int) -> TorchBlockExperts:
    """Random blocks with trained-range scales, `[experts, rows, bytes_per_row]`."""
    blocks = [random_blocks(qtype, rows, k, seed=seed + e, halves=trained_halves) for e in range(experts)]
    return TorchBlockExperts.from_blocks(np.stack(blocks), qtype)


def quantized_stack(values: torch.Tensor, qtype) -> TorchBlockExperts:
    """A float stack `[E, N, K]` quantized by gguf-py."""
    return TorchBlockExperts.from_blocks(quantize(values.numpy(), qtype), qtype)


def dequantized(stack: TorchBlockExperts) -> torch.nn.Parameter:
    values = dequantize(stack.data.numpy(), stack.qtype).reshape(tuple(stack.shape))
    return torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(values)))


def routing(n_tokens: int, n_experts: int, top_k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(n_experts, generator=gen)[:top_k] for _ in range(n_tokens)])
    weights = torch.rand(n_tokens, top_k, generator=gen)
    return weights / weights.sum(-1, keepdim=True), ids


@pytest.fixture(scope="module")
def moe_config():
    _, config, _ = load_gguf_model(MOE, dtype="float32")
    return dataclasses.replace(config, hidden_size=WIDTH, moe_intermediate_size=WIDTH)


def _pair(config, gate_up_type, down_type) -> tuple[Experts, Experts]:
    """(experts over blocks, the same experts dequantized into float parameters)."""
    e, d, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
    gate_up = block_stack(gate_up_type, e, 2 * i, d, seed=0)
    down = block_stack(down_type, e, d, i, seed=100)
    ours, ref = Experts(config), Experts(config)
    ref.gate_up_proj, ref.down_proj = dequantized(gate_up), dequantized(down)
    ours.keep_blocks(gate_up, down)
    return ours, ref


@pytest.mark.parametrize(
    "gate_up_type, down_type",
    [(Q.Q8_0, Q.Q6_K), (Q.Q4_K, Q.Q5_K), (Q.IQ4_XS, Q.IQ2_XXS), (Q.Q5_0, Q.IQ1_M)],
    ids=lambda q: q.name,
)
def test_experts_over_blocks_are_the_dequantized_experts_bit_for_bit(moe_config, gate_up_type, down_type):
    ours, ref = _pair(moe_config, gate_up_type, down_type)
    x = torch.randn(6, WIDTH, generator=torch.Generator().manual_seed(1))
    weights, ids = routing(6, moe_config.num_experts, moe_config.top_k_experts, seed=2)
    want = ref(x, weights, ids)
    got = ours(x, weights, ids)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(ours.gate_up_proj.dequantize(), ref.gate_up_proj.detach())


def test_experts_over_blocks_hold_only_the_files_bytes(moe_config):
    ours, _ = _pair(moe_config, Q.Q4_K, Q.Q6_K)
    assert not list(ours.parameters())  # the float parameters are gone
    assert set(ours.state_dict()) == {"gate_up_proj.data", "down_proj.data"}
    e, d, i = moe_config.num_experts, moe_config.hidden_size, moe_config.moe_intermediate_size
    assert ours.gate_up_proj.nbytes == e * 2 * i * 144 and ours.down_proj.nbytes == e * d * 210  # per 256


def test_blocks_of_the_wrong_shape_are_refused_by_name(moe_config):
    experts = Experts(moe_config)
    e, d = moe_config.num_experts, moe_config.hidden_size
    wrong = block_stack(Q.Q8_0, e, d, 2 * WIDTH, seed=0)  # rows twice as wide as the model's
    with pytest.raises(ValueError, match=r"experts.gate_up_proj: blocks of shape \[4, 256, 512\]"):
        experts.keep_blocks(wrong, wrong)


def test_a_tiny_moe_target_with_block_experts_is_its_dequantized_model_bit_for_bit():
    """The MoE fixture (every layer has experts beside its dense MLP) with its expert stacks
    quantized by gguf-py (Q8_0 gate/up, Q5_0 down), as blocks and as dequantized floats."""
    ours, config, _ = load_gguf_model(MOE, dtype="float32")
    ref, _, _ = load_gguf_model(MOE, dtype="float32")
    assert config.num_experts > 1
    for layer_ours, layer_ref in zip(ours.layers, ref.layers, strict=True):
        gate_up = quantized_stack(layer_ref.experts.gate_up_proj.detach(), Q.Q8_0)
        down = quantized_stack(layer_ref.experts.down_proj.detach(), Q.Q5_0)
        layer_ref.experts.gate_up_proj, layer_ref.experts.down_proj = dequantized(gate_up), dequantized(down)
        layer_ours.experts.keep_blocks(gate_up, down)
    tokens = torch.randint(0, config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(3))
    got, want = target_logits(ours, tokens), target_logits(ref, tokens)
    assert torch.equal(got, want)


def test_the_imatrix_observer_sees_block_stacks_as_expert_stacks():
    from gemma_mtp.calibrate.imatrix import product_names

    model, config, _ = load_gguf_model(MOE, dtype="float32")
    experts = model.layers[0].experts
    experts.keep_blocks(
        quantized_stack(experts.gate_up_proj.detach(), Q.Q8_0),
        quantized_stack(experts.down_proj.detach(), Q.Q8_0),
    )
    products = product_names(model, config)
    assert products[id(experts.gate_up_proj)].names == ("blk.0.ffn_gate_up_exps.weight",)
    assert products[id(experts.down_proj)].n_mat == config.num_experts


# ------------------------------------------------------- through the fused kernel (interpreter)


def test_experts_over_blocks_take_the_fused_kernel_where_it_runs(moe_config, monkeypatch):
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from gemma_mtp.quant import torch_blocks, triton_blocks

    if triton_blocks.WHY_UNAVAILABLE is not None:
        pytest.skip(f"{triton_blocks.WHY_UNAVAILABLE}: install the dev extra")
    if not torch.cuda.is_available() and type(triton_blocks._gemv_kernel).__name__ != "InterpretedFunction":
        pytest.skip("the kernels were decorated before TRITON_INTERPRET=1 was set: no interpreter")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(torch_blocks, "FUSED_DEVICES", frozenset({device}))
    seen = []
    real = triton_blocks.triton_linear
    monkeypatch.setattr(triton_blocks, "triton_linear", lambda *a: seen.append(a[2]) or real(*a))
    ours, ref = _pair(moe_config, Q.Q4_K, Q.IQ4_XS)
    x = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(4))
    weights, ids = routing(3, moe_config.num_experts, moe_config.top_k_experts, seed=5)
    want = ref(x, weights, ids)
    got = ours.to(device)(x.to(device), weights.to(device), ids.to(device)).cpu()
    assert set(seen) == {Q.Q4_K, Q.IQ4_XS}
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
