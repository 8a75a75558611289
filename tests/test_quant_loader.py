"""Loading GGUF files with quantized weights kept quantized (tiny HF models -> Q8_0 GGUF).

Against the float32 dequantized load, a quantized load must be no further off than the bfloat16
dequantized load is: the gguf and q8 kernels' weights are the file's (their activations are rounded
to int8 per 32), torch's int4pack weights differ from the dequantized ones by at most the bfloat16
rounding of the block scales (see test_quant_kernels.py).
"""

from __future__ import annotations

import dataclasses

import hf_reference as ref
import pytest
import torch
from native_required import native_or_skip
from test_gguf_helpers import synthetic_shared_kv, target_logits

import gemma_mtp
from gemma_mtp.errors import UsageError
from gemma_mtp.quant import QuantEmbedding, QuantLinear
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")


def _q8_file(reference_models, tmp_path, name: str):
    return convert_hf_to_gguf(reference_models.target(name).path, tmp_path / f"{name}.gguf", out_type="Q8_0")


def _in_mapping_of(path, tensor: torch.Tensor) -> bool:
    """Whether the tensor's bytes lie in a memory mapping of the file `path` (Linux)."""
    start, stop = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip() == str(path):
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= start and stop <= hi:
                return True
    return False


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(ref.TARGET_BUILDERS))
def test_quantized_load_is_as_close_to_float32_as_the_bf16_load(reference_models, tmp_path, name):
    path = _q8_file(reference_models, tmp_path, name)
    tokens = ref.random_tokens(1, 16, seed=5)
    want = target_logits(load_gguf_model(path, dtype="float32")[0], tokens)
    bf16 = target_logits(load_gguf_model(path, dtype="bfloat16", quantized=False)[0], tokens)
    quant = target_logits(load_gguf_model(path)[0], tokens)
    # the MoE target's expert products also take int8-rounded activations since its expert stacks
    # stay blocks on the CPU (quant/experts.py, as llama.cpp multiplies them): measured 1.95-2.1x
    # the bf16 load's error over three prompts (0.054-0.101 against 0.028-0.049); with float32
    # expert products it was within 1.5x
    factor = 2.5 if name == "moe" else 1.5
    assert _rel(quant, want) <= factor * _rel(bf16, want) + 0.01


def test_matrices_and_the_tied_head_are_swapped_and_reported(reference_models, tmp_path):
    path = _q8_file(reference_models, tmp_path, "e2b")
    model, _, report = load_gguf_model(path)
    _, _, dense = load_gguf_model(path, dtype="bfloat16", quantized=False)
    assert isinstance(model.embed_tokens, QuantEmbedding) and model.embed_tokens.table.kind == "gguf"
    assert isinstance(model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(model.layers[0].mlp.down_proj, QuantLinear)
    assert model.dtype == torch.float32  # auto: float32 activations over the native kernel
    assert any(
        n.startswith("Q8_0 x") and "kept quantized: native kernel on the GGUF blocks" in n
        for n in report.notices
    )
    assert any(n.startswith("weights take") for n in report.notices)
    assert report.n_bytes < dense.n_bytes


def test_lookup_only_tables_keep_their_blocks_and_decode_exact_rows(tmp_path):
    # per-layer embeddings 6 x 16 = 96 wide: whole Q8_0 blocks (the shared tiny E2B's 48 are not)
    text = ref.e2b_text_kwargs() | {"hidden_size_per_layer_input": 16}
    path = convert_hf_to_gguf(
        ref._gemma4(tmp_path / "ple", 0, text, False).path, tmp_path / "p.gguf", out_type="Q8_0"
    )
    model, _, report = load_gguf_model(path)
    dense, _, _ = load_gguf_model(path, dtype=str(model.dtype).removeprefix("torch."), quantized=False)
    assert model.embed_tokens_per_layer.table.kind == "blocks"
    tokens = torch.tensor([[0, 5, 255]])
    assert torch.equal(model.embed_tokens_per_layer(tokens), dense.embed_tokens_per_layer(tokens))
    assert any("GGUF blocks kept as stored" in n for n in report.notices)


def test_expert_stacks_stay_blocks_on_the_cpu(reference_models, tmp_path):
    from gemma_mtp.quant.experts import GGUFBlockExperts

    path = _q8_file(reference_models, tmp_path, "moe")
    model, _, report = load_gguf_model(path)
    experts = model.layers[0].experts
    assert isinstance(experts.gate_up_proj, GGUFBlockExperts) and isinstance(
        experts.down_proj, GGUFBlockExperts
    )
    assert not any(n.startswith("dequantized Q8_0") for n in report.notices), report.notices


def test_explicit_float32_loads_stay_dequantized_unless_asked(reference_models, tmp_path):
    path = _q8_file(reference_models, tmp_path, "gemma3")
    model, _, report = load_gguf_model(path, dtype="float32")
    assert isinstance(model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert any("dequantized Q8_0" in n for n in report.notices)
    model, _, _ = load_gguf_model(path, dtype="float32", quantized=True)
    assert isinstance(model.layers[0].self_attn.q_proj, QuantLinear) and model.dtype == torch.float32
    model, _, _ = load_gguf_model(path, dtype="bfloat16")
    assert model.layers[0].self_attn.q_proj.qweight.kind == "gguf" and model.dtype == torch.bfloat16
    with pytest.raises(UsageError, match="unknown GGUF type"):
        load_gguf_model(path, kernels={"Q9_9": "int8"})


def test_without_the_native_kernel_torch_kernels_stand_in_and_say_so(reference_models, tmp_path, monkeypatch):
    from gemma_mtp import native

    path = _q8_file(reference_models, tmp_path, "gemma3")
    monkeypatch.setenv("GEMMA_MTP_NATIVE", "0")
    native.reset()
    try:
        model, _, report = load_gguf_model(path)
    finally:
        monkeypatch.delenv("GEMMA_MTP_NATIVE")
        native.reset()
    assert model.embed_tokens.table.kind == "int4" and model.dtype == torch.bfloat16
    assert any("GEMMA_MTP_NATIVE=0" in n and "torch's weight-only kernels" in n for n in report.notices)
    tokens = ref.random_tokens(1, 16, seed=5)
    want = target_logits(load_gguf_model(path, dtype="float32")[0], tokens)
    assert _rel(target_logits(model, tokens), want) <= 0.05


def test_kernels_override_puts_q8_0_in_int8_rows(reference_models, tmp_path):
    path = _q8_file(reference_models, tmp_path, "gemma3")
    model, _, report = load_gguf_model(path, kernels={"Q8_0": "int8"})
    assert model.embed_tokens.table.kind == "int8"
    assert any("int8pack" in n and "lossy" in n for n in report.notices)
    tokens = ref.random_tokens(1, 16, seed=5)
    want = target_logits(load_gguf_model(path, dtype="float32")[0], tokens)
    assert _rel(target_logits(model, tokens), want) <= 0.05


@pytest.mark.parametrize("ordered", [False, True])
def test_quantized_drafter_loads_and_runs(reference_models, tmp_path, ordered):
    reference = reference_models.assistant("e2b", ordered=ordered)
    path = convert_hf_to_gguf(reference.path, tmp_path / "drafter.gguf", out_type="Q8_0", keep_centroids=True)
    model, config, report = load_gguf_model(path)
    assert isinstance(model.pre_projection, QuantLinear)
    # a dense head is the tied kernel; a centroid head reads its candidates' rows of the blocks
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    assert not any("centroid head gathers rows" in n for n in report.notices)
    if ordered:
        dense, _, _ = load_gguf_model(path, dtype="float32")
        x = torch.randn(2, 1, config.text.hidden_size, generator=torch.Generator().manual_seed(0))
        ids, cand = model.head_candidates(x)
        want_ids, want = dense.head_candidates(x)
        assert torch.equal(ids, want_ids)  # the same clusters chosen (no near tie with this seed)
        assert torch.allclose(cand, want, rtol=0.02, atol=0.02 * want.abs().max().item())  # int8 x
    backbone = config.backbone_hidden_size
    shared = {
        kind: dataclasses.replace(kv, keys=kv.keys.to(model.dtype), values=kv.values.to(model.dtype))
        for kind, kv in synthetic_shared_kv(config.text).items()
    }
    out = model(torch.randn(1, 1, 2 * backbone, dtype=model.dtype), torch.tensor([[5]]), shared)
    assert out.logits.shape == (1, 1, config.text.vocab_size) and torch.isfinite(out.logits).all()


def test_speculative_output_equals_plain_output_on_a_quantized_target(reference_models, tmp_path):
    path = _q8_file(reference_models, tmp_path, "gemma3")
    engine = gemma_mtp.load(path, device="cpu")
    prompt = [2] + [5, 9, 13, 7, 5, 9, 13, 11] * 3
    greedy = SamplingParams(temperature=0)
    plain = engine.generate(prompt, n_predict=24, sampling=greedy, spec=SpecOptions())
    for n_max in (1, 3, 6):
        spec = engine.generate(
            prompt, n_predict=24, sampling=greedy, spec=SpecOptions(type="ngram", n_max=n_max)
        )
        assert spec.token_ids == plain.token_ids


@pytest.mark.parametrize("kind", ["gguf", "q8"])
def test_q_k_v_and_gate_up_fuse_into_one_matmul_over_shared_memory(reference_models, tmp_path, kind):
    path = _q8_file(reference_models, tmp_path, "gemma3")
    native_or_skip()
    model, _, _ = load_gguf_model(path, kernels={"Q8_0": kind})
    assert model.embed_tokens.table.kind == kind
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.fused_qkv is not None and mlp.fused_gate_up is not None
    x = torch.randn(3, attn.q_proj.in_features)
    q, k, v = attn.fused_qkv(x)
    # the same numbers as the separate projections, with no second copy of their weights
    assert (
        torch.equal(q, attn.q_proj(x)) and torch.equal(k, attn.k_proj(x)) and torch.equal(v, attn.v_proj(x))
    )
    if kind == "q8":  # the separate weights are row views of the fused codes
        fused = attn.fused_qkv.weight.q
        assert attn.k_proj.qweight.q.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    else:  # the fused call reads the separate weights, which are the file's mapped bytes
        assert [p.data.data_ptr() for p in attn.fused_qkv.weight.parts] == [
            m.qweight.data.data_ptr() for m in (attn.q_proj, attn.k_proj, attn.v_proj)
        ]
        assert all(_in_mapping_of(path, m.qweight.data) for m in (attn.q_proj, attn.k_proj, mlp.up_proj))
        assert _in_mapping_of(path, model.embed_tokens.table.data)
    gate, up = mlp.fused_gate_up(x)
    assert torch.equal(gate, mlp.gate_proj(x)) and torch.equal(up, mlp.up_proj(x))
    tokens = ref.random_tokens(1, 16, seed=5)
    want = target_logits(load_gguf_model(path, dtype="float32")[0], tokens)
    assert _rel(target_logits(model, tokens), want) <= 0.05  # int8 activations on a random tiny model
