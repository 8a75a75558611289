"""HF tiny targets -> our GGUF writer -> our GGUF loader: same config, same logits.

F32 files must reproduce the HF load bit for bit. Q8_0 files must reproduce, to 1e-5, the HF
model whose matrices went through gguf-py's own Q8_0 round trip: the only error allowed is Q8_0
rounding itself. (Against the float model the tiny random models amplify that 0.4% weight error a
lot; only the Gemma 3 one, closest to a trained model's scales, gets an end-to-end bound.)
"""

from __future__ import annotations

import dataclasses

import gguf
import hf_reference as ref
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from test_gguf_helpers import realigned, target_logits

from gemma_mtp.config import FULL
from gemma_mtp.gguf.names import BODY_GLOBAL, BODY_LAYER, ROPE_FREQS, norm_offset
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model
from gemma_mtp.weights.hf import load_hf_model

pytest.importorskip("transformers")

TARGETS = list(ref.TARGET_BUILDERS)
TOKENS = 16


def _converted(reference_models, tmp_path, name: str, out_type: str):
    reference = reference_models.target(name)
    path = convert_hf_to_gguf(reference.path, tmp_path / f"{name}.{out_type}.gguf", out_type=out_type)
    return reference, path


@pytest.mark.parametrize("name", TARGETS)
def test_f32_gguf_gives_the_hf_logits_bit_for_bit(reference_models, tmp_path, name):
    reference, path = _converted(reference_models, tmp_path, name, "F32")
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    gguf_model, _, report = load_gguf_model(path, dtype="float32")
    tokens = ref.random_tokens(1, TOKENS, seed=3)
    expected = target_logits(realigned(hf_model), tokens)
    assert torch.equal(target_logits(realigned(gguf_model), tokens), expected)
    assert report.notices == []  # nothing was dequantized


@pytest.mark.parametrize("name", TARGETS)
def test_gguf_metadata_gives_the_hf_config(reference_models, tmp_path, name):
    reference, path = _converted(reference_models, tmp_path, name, "F32")
    _, hf_config, _ = load_hf_model(reference.path, dtype="float32")
    _, gguf_config, _ = load_gguf_model(path, dtype="float32")
    # GGUF has one architecture for Gemma 4 and the 12B "unified" text model (same modules)
    expected = (
        dataclasses.replace(hf_config, family="gemma4") if hf_config.family == "gemma4_unified" else hf_config
    )
    assert gguf_config == expected


def _q8_round_trip(values: torch.Tensor) -> torch.Tensor:
    """gguf-py's Q8_0 round trip; rows that are not whole 32-blocks fall back to F16, as in llama.cpp."""
    array = values.float().numpy()
    if array.shape[-1] % 32:
        return torch.from_numpy(array.astype(np.float16).astype(np.float32))
    return torch.from_numpy(dequantize(quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("name", TARGETS)
def test_q8_0_gguf_equals_hf_model_with_q8_0_rounded_matrices(reference_models, tmp_path, name):
    reference, path = _converted(reference_models, tmp_path, name, "Q8_0")
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    with torch.no_grad():
        for param_name, param in hf_model.named_parameters():
            # the MoE router stays F32, as llama.cpp's converter keeps it
            if param.dim() >= 2 and not param_name.endswith("router.proj.weight"):
                param.copy_(_q8_round_trip(param).reshape(param.shape))
    gguf_model, config, report = load_gguf_model(path, dtype="float32")
    for (name_a, a), (name_b, b) in zip(
        hf_model.state_dict().items(), gguf_model.state_dict().items(), strict=True
    ):
        # Gemma 3 norms hold (1 + w) - 1 after loading: compare the scale the model applies
        offset = norm_offset(config.family, name_a)
        assert name_a == name_b and torch.equal(a + offset, b + offset), name_a
    tokens = ref.random_tokens(1, TOKENS, seed=4)
    diff = (target_logits(realigned(gguf_model), tokens) - target_logits(realigned(hf_model), tokens)).abs()
    assert diff.max().item() <= 1e-5
    assert any("dequantized Q8_0" in notice for notice in report.notices)


def test_q8_0_gemma3_logits_stay_close_to_the_float_model(reference_models, tmp_path):
    """End-to-end Q8_0 error on the Gemma 3 tiny model: relative L2 <= 5%, same top-1 at >= 90% of positions."""
    reference, path = _converted(reference_models, tmp_path, "gemma3", "Q8_0")
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    gguf_model, _, _ = load_gguf_model(path, dtype="float32")
    tokens = ref.random_tokens(1, TOKENS, seed=5)
    want, got = target_logits(hf_model, tokens), target_logits(gguf_model, tokens)
    assert ((got - want).norm() / want.norm()).item() <= 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.parametrize("out_type", ["F16", "BF16"])
def test_half_precision_outputs_load_within_their_rounding(reference_models, tmp_path, out_type):
    reference, path = _converted(reference_models, tmp_path, "e2b", out_type)
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    gguf_model, _, _ = load_gguf_model(path, dtype="float32")
    for (name, a), b in zip(hf_model.state_dict().items(), gguf_model.state_dict().values(), strict=True):
        rel = 2**-10 if out_type == "F16" else 2**-7
        assert torch.allclose(a.float(), b.float(), rtol=rel, atol=1e-6), name


@pytest.mark.parametrize("name", ["e2b", "moe", "gemma3"])
def test_written_file_reads_back_with_gguf_reader(reference_models, tmp_path, name):
    reference, path = _converted(reference_models, tmp_path, name, "Q8_0")
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert arch == ("gemma3" if name == "gemma3" else "gemma4")
    gguf_model, _, _ = load_gguf_model(path, dtype="float32")
    state = gguf_model.state_dict()
    names = {t.name: t for t in reader.tensors}
    assert names["token_embd.weight"].tensor_type == GGMLQuantizationType.Q8_0
    # GGUF lists dims fastest-first: the reverse of the torch shape
    assert list(names["token_embd.weight"].shape) == list(reversed(state["embed_tokens.weight"].shape))
    assert names["output_norm.weight"].tensor_type == GGMLQuantizationType.F32


def test_gemma3_norms_are_stored_as_one_plus_w(reference_models, tmp_path):
    reference, path = _converted(reference_models, tmp_path, "gemma3", "F32")
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    for ours, theirs in (
        ("norm.weight", "output_norm.weight"),
        ("layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"),
    ):
        assert np.array_equal(stored[theirs], hf_model.state_dict()[ours].numpy() + np.float32(1))


def test_gemma4_norms_are_stored_as_is_and_rope_freqs_encode_the_partial_rotary_factor(
    reference_models, tmp_path
):
    reference, path = _converted(reference_models, tmp_path, "e2b", "F32")
    hf_model, config, _ = load_hf_model(reference.path, dtype="float32")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    assert np.array_equal(stored["output_norm.weight"], hf_model.state_dict()["norm.weight"].numpy())
    head_full = next(s.head_dim for s in config.layers if s.kind == FULL)
    n_rot = int(config.rope[FULL].partial_rotary_factor * head_full // 2)
    freqs = stored[ROPE_FREQS]
    assert freqs.shape == (head_full // 2,)
    assert np.all(freqs[:n_rot] == 1.0) and np.all(freqs[n_rot:] == np.float32(1e30))


def test_name_tables_agree_with_gguf_py():
    """Every table entry is what gguf-py maps the HF name to, except the names llama.cpp's converter
    renames in code (router scales) or suffixes (layer_scalar, the 3-D expert tensors)."""
    renamed_in_code = {"router.scale", "router.per_expert_scale"}
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, 2)
    for ours, theirs in BODY_GLOBAL.items():
        assert mapping.get_name("model." + ours.removesuffix(".weight")) == theirs.removesuffix(".weight")
    for ours, theirs in BODY_LAYER.items():
        if ours in renamed_in_code:
            continue
        got = mapping.get_name("model.layers.1." + ours.removesuffix(".weight"))
        assert got == "blk.1." + theirs.removesuffix(".weight"), ours
    gemma3_names = {gguf.TENSOR_NAMES[t].format(bid=1) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA3]}
    gemma3_layer = [
        v for k, v in BODY_LAYER.items() if k.startswith(("self_attn", "mlp")) or "layernorm." in k
    ]
    assert {"blk.1." + v.removesuffix(".weight") for v in gemma3_layer} <= gemma3_names
