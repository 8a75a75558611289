"""Broken or foreign GGUF files give one clear ModelFormatError naming the file and what is wrong;
files without our explicit keys get llama.cpp's defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_gguf_helpers import rewrite_gguf

from gemma_mtp.config import FULL, SLIDING
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gemma3_gguf(reference_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_errors") / "gemma3.gguf"
    return convert_hf_to_gguf(reference_models.target("gemma3").path, out)


def _truncated(src, dst, keep: int):
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def test_truncated_tensor_data_names_the_file_and_the_tensor(gemma3_gguf, tmp_path):
    path = _truncated(gemma3_gguf, tmp_path / "cut.gguf", gemma3_gguf.stat().st_size - 100)
    with pytest.raises(ModelFormatError, match=r"cut\.gguf: tensor .* truncated"):
        load_gguf_model(path)


def test_truncated_header_names_the_file(gemma3_gguf, tmp_path):
    path = _truncated(gemma3_gguf, tmp_path / "head.gguf", 200)
    with pytest.raises(ModelFormatError, match=r"head\.gguf: .*truncated"):
        load_gguf_model(path)


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_gguf_model(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_gguf_model(tmp_path / "absent.gguf")


def test_unknown_architecture_is_named_with_the_supported_ones(gemma3_gguf, tmp_path):
    path = rewrite_gguf(gemma3_gguf, tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(
        ModelFormatError, match=r"general.architecture 'llama' is not supported.*gemma4-assistant"
    ):
        load_gguf_model(path)


def test_missing_tensor_is_named(gemma3_gguf, tmp_path):
    path = rewrite_gguf(gemma3_gguf, tmp_path / "missing.gguf", drop_tensors=("blk.3.ffn_up.weight",))
    with pytest.raises(
        ModelFormatError, match=r"missing tensor blk\.3\.ffn_up\.weight \(layers\.3\.mlp\.up_proj"
    ):
        load_gguf_model(path)


def test_unexpected_tensor_is_named(gemma3_gguf, tmp_path):
    extra = {"blk.0.attn_sinks.weight": np.zeros(4, dtype=np.float32)}
    path = rewrite_gguf(gemma3_gguf, tmp_path / "extra.gguf", extra_tensors=extra)
    with pytest.raises(ModelFormatError, match=r"unexpected tensor blk\.0\.attn_sinks\.weight"):
        load_gguf_model(path)


def test_misshapen_tensor_is_named(gemma3_gguf, tmp_path):
    wrong = {"blk.1.ffn_norm.weight": np.zeros(32, dtype=np.float32)}
    path = rewrite_gguf(gemma3_gguf, tmp_path / "shape.gguf", replace_tensors=wrong)
    with pytest.raises(ModelFormatError, match=r"tensor blk\.1\.ffn_norm\.weight has shape \[32\]"):
        load_gguf_model(path)


def test_missing_required_key_is_named(gemma3_gguf, tmp_path):
    path = rewrite_gguf(gemma3_gguf, tmp_path / "nokey.gguf", drop_keys=("gemma3.block_count",))
    with pytest.raises(ModelFormatError, match=r"missing metadata key gemma3\.block_count"):
        load_gguf_model(path)


def test_gemma3_file_without_our_explicit_keys_gets_llama_cpp_defaults(gemma3_gguf, tmp_path):
    """llama.cpp's own Gemma 3 files carry no sliding pattern, local RoPE base or attention scale."""
    drop = ("gemma3.attention.sliding_window_pattern", "gemma3.rope.freq_base_swa", "gemma3.attention.scale")
    path = rewrite_gguf(gemma3_gguf, tmp_path / "plain.gguf", drop_keys=drop)
    _, config, _ = load_gguf_model(path, dtype="float32")
    assert [s.kind for s in config.layers] == [SLIDING] * 5 + [FULL]  # every 6th layer is full
    assert config.rope[SLIDING].theta == 10_000.0
    assert math.isclose(config.attention_scale, config.layers[0].head_dim ** -0.5)


def test_kv_tensors_of_kv_shared_layers_are_tolerated(reference_models, tmp_path):
    """Files converted from checkpoints that still carry K/V for KV-shared layers load as llama.cpp's do."""
    source = convert_hf_to_gguf(reference_models.target("e2b").path, tmp_path / "e2b.gguf")
    _, config, _ = load_gguf_model(source, dtype="float32")
    shared = next(s for s in config.layers if not s.owns_kv)
    width = shared.kv_heads * shared.head_dim
    extra = {f"blk.{shared.index}.attn_k.weight": np.zeros((width, config.hidden_size), dtype=np.float32)}
    path = rewrite_gguf(source, tmp_path / "with_kv.gguf", extra_tensors=extra)
    load_gguf_model(path, dtype="float32")


@pytest.mark.parametrize(
    ("out_type", "dtype"), [("F32", torch.float32), ("F16", torch.bfloat16), ("Q8_0", None)]
)
def test_auto_dtype_keeps_f32_files_f32_and_halves_the_others(reference_models, tmp_path, out_type, dtype):
    """auto: F32 files stay float32, F16 ones load in bfloat16; quantized files on the CPU keep their
    weights quantized under float32 activations when our q8 kernel is built (else bfloat16)."""
    from gemma_mtp import native

    if dtype is None:
        dtype = torch.float32 if native.module() is not None else torch.bfloat16
    path = convert_hf_to_gguf(reference_models.target("gemma3").path, tmp_path / "m.gguf", out_type=out_type)
    model, _, report = load_gguf_model(path)
    assert report.dtype == dtype and model.embed_tokens.weight.dtype == dtype
