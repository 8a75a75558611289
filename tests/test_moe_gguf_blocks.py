"""A MoE GGUF whose expert stacks are quantized, loaded on the torch kernel (what a GPU load does;
`--quant-kernels torch` on the CPU): the 3-D stacks stay the file's blocks
(`TorchBlockExperts`), the logits are the dequantized load's bit for bit, and the placement
plan (`weights/placement.py`) counts the bytes the load holds.

Reference: the same file loaded with `quantized=False` (gguf-py's dequantized float32 weights).
The other tensors stay F32, so the expert products are the only ones that differ in form.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize
from test_gguf_helpers import target_logits

from gemma_mtp.gguf.reader import open_gguf, tensor_shape, tensor_values
from gemma_mtp.gguf.writer import Entry, write_gguf
from gemma_mtp.quant.torch_blocks import TORCH_BLOCK_TYPES, TorchBlockExperts
from gemma_mtp.weights import gguf_loader
from gemma_mtp.weights.gguf_loader import load_gguf_model
from gemma_mtp.weights.placement import gguf_sizes, quantized_matrices

Q = GGMLQuantizationType
MOE = Path(__file__).parent / "fixtures" / "llama_cpp" / "moe.f32.gguf"
ALL_TORCH = {q.name: "torch" for q in TORCH_BLOCK_TYPES}


def moe_gguf(path: Path, gate_up: Q | None = Q.Q8_0, down: Q | None = Q.Q5_0) -> Path:
    """moe.f32.gguf with its expert stacks quantized by gguf-py (None: that stack stays F32)."""
    gf = open_gguf(MOE)
    types = {"ffn_gate_up_exps.weight": gate_up, "ffn_down_exps.weight": down}
    tensors = []
    for name, t in gf.tensors.items():
        qtype = types.get(name.split(".", 2)[-1])
        if qtype is None:
            tensors.append((name, np.asarray(t.data), t.tensor_type))
        else:
            values = np.asarray(tensor_values(t), dtype=np.float32).reshape(tensor_shape(t))
            tensors.append((name, quantize(values, qtype), qtype))
    entries = [
        Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items() if k != "general.architecture"
    ]
    return write_gguf(path, gf.arch, entries, tensors)


@pytest.fixture(scope="module")
def quantized_moe(tmp_path_factory) -> Path:
    return moe_gguf(tmp_path_factory.mktemp("moe") / "moe.experts_q8_0_q5_0.gguf")


def _tokens(config) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(7))


def _stacks(model) -> list[TorchBlockExperts]:
    return [m for m in model.modules() if isinstance(m, TorchBlockExperts)]


def test_expert_stacks_on_the_torch_kernel_stay_the_files_blocks(quantized_moe):
    model, config, report = load_gguf_model(quantized_moe, dtype="float32", kernels=ALL_TORCH, quantized=True)
    stacks = _stacks(model)
    assert len(stacks) == 2 * config.num_layers
    assert {s.qtype for s in stacks} == {Q.Q8_0, Q.Q5_0}
    gf = open_gguf(quantized_moe)
    for i, layer in enumerate(model.layers):
        for ours, theirs in (("gate_up_proj", "ffn_gate_up_exps"), ("down_proj", "ffn_down_exps")):
            stack = getattr(layer.experts, ours)
            file_bytes = np.asarray(gf.tensors[f"blk.{i}.{theirs}.weight"].data).view(np.uint8)
            assert stack.nbytes == file_bytes.size  # memory = the file's bytes
            assert np.array_equal(stack.data.numpy(), file_bytes)
    assert not any(name.endswith(("gate_up_proj", "down_proj")) for name, _ in model.named_parameters())
    want = f"Q5_0 x{config.num_layers} kept quantized: torch ops on the GGUF blocks"
    assert any(want in n for n in report.notices), report.notices


def test_a_moe_target_with_block_experts_is_its_dequantized_load_bit_for_bit(quantized_moe):
    ours, config, _ = load_gguf_model(quantized_moe, dtype="float32", kernels=ALL_TORCH, quantized=True)
    ref, _, _ = load_gguf_model(quantized_moe, dtype="float32", quantized=False)
    assert _stacks(ours) and not _stacks(ref)
    tokens = _tokens(config)
    assert torch.equal(target_logits(ours, tokens), target_logits(ref, tokens))


def test_one_stack_quantized_the_other_float_loads_both(tmp_path):
    path = moe_gguf(tmp_path / "moe.gate_up_q8_0.gguf", gate_up=Q.Q8_0, down=None)
    ours, config, _ = load_gguf_model(path, dtype="float32", kernels=ALL_TORCH, quantized=True)
    ref, _, _ = load_gguf_model(path, dtype="float32", quantized=False)
    experts = ours.layers[0].experts
    assert isinstance(experts.gate_up_proj, TorchBlockExperts)
    assert isinstance(experts.down_proj, torch.nn.Parameter)
    tokens = _tokens(config)
    assert torch.equal(target_logits(ours, tokens), target_logits(ref, tokens))


def test_on_the_cpu_expert_stacks_stay_blocks_for_the_native_kernel(quantized_moe):
    """The CPU's default load: both stacks stay the file's bytes (`GGUFBlockExperts`), products
    by the native kernel (int8-rounded activations, so close to the dequantized load rather than
    equal), and a forward over several positions gives each the bits of one-position steps."""
    from gemma_mtp.quant.experts import GGUFBlockExperts

    model, config, report = load_gguf_model(quantized_moe, dtype="float32", quantized=True)
    stacks = _stacks(model)
    assert len(stacks) == 2 * config.num_layers and all(isinstance(s, GGUFBlockExperts) for s in stacks)
    gf = open_gguf(quantized_moe)
    stack = model.layers[0].experts.down_proj
    file_bytes = np.asarray(gf.tensors["blk.0.ffn_down_exps.weight"].data).view(np.uint8)
    assert stack.nbytes == file_bytes.size and np.array_equal(stack.data.numpy(), file_bytes)
    assert not any(n.startswith("dequantized Q5_0") for n in report.notices), report.notices
    ref, _, _ = load_gguf_model(quantized_moe, dtype="float32", quantized=False)
    tokens = _tokens(config)
    got, want = target_logits(model, tokens), target_logits(ref, tokens)
    assert ((got - want).norm() / want.norm()).item() < 0.03
    # the experts alone (this fixture's other matrices are F32, on torch's GEMM, which is not
    # batch-invariant): 10 tokens routed together give each token the bits it gets alone
    experts = model.layers[0].experts
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, config.hidden_size, generator=gen)
    ids = torch.randint(0, config.num_experts, (10, 2), generator=gen)
    weights = torch.rand(10, 2, generator=gen)
    with torch.no_grad():
        together = experts(x, weights, ids)
        alone = torch.cat([experts(x[i : i + 1], weights[i : i + 1], ids[i : i + 1]) for i in range(10)])
    assert torch.equal(together, alone)


def test_a_type_kept_float_is_dequantized_and_the_report_says_why(quantized_moe):
    model, _, report = load_gguf_model(
        quantized_moe, dtype="float32", kernels={"Q5_0": "float"}, quantized=True
    )
    assert {s.qtype for s in _stacks(model)} == {Q.Q8_0}  # the Q8_0 stacks still stay blocks
    said = [n for n in report.notices if n.startswith("dequantized Q5_0 x4")]
    assert said and "stay blocks only on the native kernel" in said[0], report.notices


def test_the_plan_counts_the_bytes_the_load_holds(quantized_moe):
    model, _, report = load_gguf_model(quantized_moe, dtype="float32", kernels=ALL_TORCH, quantized=True)
    sizes, _ = gguf_sizes(quantized_moe, dtype="float32", quantized=True)
    planned = sum(sizes.layers) + sizes.rest  # the weights alone (on_device adds the KV's trash slots)
    held = {id(t): t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())}
    rotary = sum(m.inv_freq.numel() * 4 for m in model.rotary.values())  # rebuilt, not in the file
    assert planned == report.n_bytes == sum(held.values()) - rotary
    for i, layer in enumerate(model.layers):  # layer by layer too (what -ngl N places)
        state = layer.state_dict().values()
        assert sizes.layers[i] == sum(t.numel() * t.element_size() for t in state)


def test_the_plan_keeps_expert_stacks_only_of_a_type_the_torch_kernel_reads():
    block, size = GGML_QUANT_SIZES[Q.Q8_0]
    assert quantized_matrices(("blk.0.ffn_gate_up_exps.weight", (4, 64, 64), Q.Q8_0))
    assert quantized_matrices(("blk.0.ffn_down_exps.weight", (4, 64, 32), Q.Q4_K)) is False  # 32 % 256
    assert quantized_matrices(("blk.0.ffn_down_exps.weight", (4, 64, 64), Q.F16)) is False
    assert quantized_matrices(("blk.0.attn_q.weight", (64, 64), Q.Q8_0))
    assert block == 32 and size == 34


def test_off_the_cpu_the_report_names_the_fused_kernels_types():
    kept = {(Q.Q8_0, "torch"): [0.0, 0.0], (Q.Q5_0, "torch"): [0.0], (Q.Q8_0, "gguf"): [0.0]}
    assert gguf_loader._device_notices(kept, "cpu") == []
    (line,) = gguf_loader._device_notices(kept, "cuda")
    assert "Q5_0 x1" in line and ("Q8_0 x2" in line)
    assert "torch-ops path" in line  # Q5_0 has no Triton kernel (or triton is missing: both named)
