"""Writing GGUF files: config -> metadata entries, float tensors -> the output type, and the file
through `gguf.GGUFWriter` inside `atomic.atomic_write` (temp file beside the output, then rename)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import QuantError, quantize

from ..config import FULL, SLIDING, AssistantConfig, TextConfig
from ..errors import UsageError
from .atomic import atomic_write
from .keys import DRAFTER_LAYOUTS, K
from .names import ROPE_FREQS_ROTATED, ROPE_FREQS_UNROTATED

__all__ = [
    "Entry",
    "OUT_TYPES",
    "metadata_entries",
    "drafter_entries",
    "encode_tensor",
    "check_out_type",
    "write_gguf",
    "rope_freqs_table",
    "LazyTensor",
    "write_gguf_lazy",
]


class Entry(NamedTuple):
    key: str
    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


# --out-type -> (tensor type of matrices, general.file_type)
DEFAULT_OUT_TYPE = "F32"  # convert's matrix type unless --outtype says otherwise
OUT_TYPES = {
    "F32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
QUANTIZATION_VERSION = 2  # ggml's current block layouts


def _u32(key: str, value: int) -> Entry:
    return Entry(key, int(value), GGUFValueType.UINT32)


def _f32(key: str, value: float) -> Entry:
    return Entry(key, float(value), GGUFValueType.FLOAT32)


def _per_layer_u32(key: str, values: list[int]) -> Entry:
    if len(set(values)) == 1:
        return _u32(key, values[0])
    return Entry(key, [int(v) for v in values], GGUFValueType.ARRAY, GGUFValueType.INT32)


def rope_freqs_table(head_dim: int, partial_rotary_factor: float) -> np.ndarray:
    """llama.cpp's frequency factors for proportional RoPE: 1.0 for rotated pairs, 1e30 for the rest."""
    n_rot = int(partial_rotary_factor * head_dim // 2)
    values = [ROPE_FREQS_ROTATED] * n_rot + [ROPE_FREQS_UNROTATED] * (head_dim // 2 - n_rot)
    return np.asarray(values, dtype=np.float32)


def _head_dims(text: TextConfig) -> tuple[int, int]:
    full = [s.head_dim for s in text.layers if s.kind == FULL]
    sliding = [s.head_dim for s in text.layers if s.kind == SLIDING]
    head_full = full[0] if full else sliding[0]
    return head_full, sliding[0] if sliding else head_full


def _common(text: TextConfig, arch: str) -> list[Entry]:
    a = f"{arch}."
    entries = [
        _u32(a + K.CONTEXT_LENGTH, text.max_position_embeddings),
        _u32(a + K.EMBEDDING_LENGTH, text.hidden_size),
        _u32(a + K.BLOCK_COUNT, text.num_layers),
        _per_layer_u32(
            a + K.FEED_FORWARD_LENGTH,
            [text.intermediate_size * (2 if s.double_wide_mlp else 1) for s in text.layers],
        ),
        _u32(a + K.HEAD_COUNT, text.num_heads),
        _per_layer_u32(a + K.HEAD_COUNT_KV, [s.kv_heads for s in text.layers]),
        _f32(a + K.RMS_EPS, text.rms_norm_eps),
        Entry(
            a + K.SLIDING_WINDOW_PATTERN,
            [s.kind == SLIDING for s in text.layers],
            GGUFValueType.ARRAY,
            GGUFValueType.BOOL,
        ),
        _f32(a + K.ROPE_FREQ_BASE, text.rope[FULL].theta),
        _f32(a + K.ROPE_FREQ_BASE_SWA, text.rope[SLIDING].theta),
    ]
    if any(s.kind == SLIDING for s in text.layers):
        entries.append(_u32(a + K.SLIDING_WINDOW, text.sliding_window))
    if text.rope[FULL].factor != 1.0:
        entries += [
            Entry(a + K.ROPE_SCALING_TYPE, "linear", GGUFValueType.STRING),
            _f32(a + K.ROPE_SCALING_FACTOR, text.rope[FULL].factor),
        ]
    if text.final_logit_softcapping:
        entries.append(_f32(a + K.FINAL_SOFTCAP, text.final_logit_softcapping))
    if text.attn_logit_softcapping:
        entries.append(_f32(a + K.ATTN_SOFTCAP, text.attn_logit_softcapping))
    return entries


def _gemma4(text: TextConfig, arch: str, *, n_shared: int) -> list[Entry]:
    a = f"{arch}."
    head_full, head_swa = _head_dims(text)
    entries = [
        _u32(a + K.KEY_LENGTH, head_full),
        _u32(a + K.VALUE_LENGTH, head_full),
        _u32(a + K.KEY_LENGTH_SWA, head_swa),
        _u32(a + K.VALUE_LENGTH_SWA, head_swa),
        _u32(a + K.ROPE_DIMS, head_full),  # proportional RoPE is carried by rope_freqs
        _u32(a + K.ROPE_DIMS_SWA, head_swa),
        _u32(a + K.SHARED_KV_LAYERS, n_shared),
        _u32(a + K.PLE_DIM, text.ple_dim),
    ]
    if text.num_experts:
        entries += [
            _u32(a + K.EXPERT_COUNT, text.num_experts),
            _u32(a + K.EXPERT_USED_COUNT, text.top_k_experts),
            _u32(a + K.EXPERT_FF_LENGTH, text.moe_intermediate_size),
        ]
    return entries


def _gemma3(text: TextConfig, arch: str) -> list[Entry]:
    a = f"{arch}."
    head_dim = text.layers[0].head_dim
    return [
        _u32(a + K.KEY_LENGTH, head_dim),
        _u32(a + K.VALUE_LENGTH, head_dim),
        _f32(a + K.ATTENTION_SCALE, text.attention_scale),
    ]


def _special_ids(text: TextConfig) -> list[Entry]:
    entries = []
    if text.eos_token_ids:
        entries.append(_u32(K.EOS_ID, text.eos_token_ids[0]))
    if len(text.eos_token_ids) > 1:
        entries.append(_u32(K.EOT_ID, text.eos_token_ids[1]))
    if text.bos_token_id is not None:
        entries.append(_u32(K.BOS_ID, text.bos_token_id))
    if text.pad_token_id is not None:
        entries.append(_u32(K.PAD_ID, text.pad_token_id))
    return entries


def metadata_entries(
    config: TextConfig | AssistantConfig,
    *,
    layout: str = "mainline",
    out_type: str = "F32",
    had_centroids: bool = False,
) -> tuple[str, list[Entry]]:
    """(general.architecture, metadata entries) for a target or a drafter in `layout`
    (`had_centroids`: see `drafter_entries`)."""
    _, file_type = OUT_TYPES[out_type]
    if isinstance(config, AssistantConfig):
        spec = DRAFTER_LAYOUTS[layout]
        arch, text = spec.arch, config.text
        entries = _common(text, arch) + _gemma4(text, arch, n_shared=text.num_layers)
        entries += drafter_entries(config, arch, layout, had_centroids=had_centroids)
    else:
        text = config
        arch = "gemma3" if config.family == "gemma3" else "gemma4"
        entries = _common(text, arch)
        if arch == "gemma3":
            entries += _gemma3(text, arch)
        else:
            entries += _gemma4(text, arch, n_shared=sum(not s.owns_kv for s in text.layers))
    entries += _special_ids(text)
    entries.append(_u32(K.FILE_TYPE, int(file_type)))
    entries.append(_u32(K.QUANTIZATION_VERSION, QUANTIZATION_VERSION))
    return arch, entries


def drafter_entries(
    config: AssistantConfig, arch: str, layout: str, *, had_centroids: bool = False
) -> list[Entry]:
    """The drafter's own keys in `layout`. `had_centroids`: the checkpoint has a centroid head that
    this file leaves out (mainline by default); the head keys then say so, for our loader's notice."""
    spec, a = DRAFTER_LAYOUTS[layout], f"{arch}."
    entries = [_u32(a + spec.backbone_key, config.backbone_hidden_size)]
    if spec.nextn_key:
        entries.append(_u32(a + "nextn_predict_layers", config.text.num_layers))
    ordered = config.use_ordered_embeddings or had_centroids
    if ordered:
        entries.append(_u32(a + spec.centroid_count_key, config.num_centroids))
        entries.append(_u32(a + spec.centroid_top_k_key, config.centroid_top_k))
    if ordered or spec.head_keys_when_dense:
        entries.append(Entry(a + spec.ordered_key, ordered, GGUFValueType.BOOL))
    if spec.requires_target_arch:
        entries.append(Entry(a + "requires_target_arch", spec.requires_target_arch, GGUFValueType.STRING))
    return entries


# llama.cpp's converter keeps these matrices in F32 whatever --outtype says (`ModelBase.prepare_tensors`:
# the MoE router), as its quantizer does; and every tensor whose name does not end in `.weight`.
F32_MATRICES = ("ffn_gate_inp.weight",)


def encode_tensor(
    values: np.ndarray, out_type: str, name: str = ""
) -> tuple[np.ndarray, GGMLQuantizationType]:
    """Float32 values -> (data, type) as llama.cpp's converter stores them: vectors, the MoE router
    and tensors not named `*.weight` stay F32, integer tables keep their type, matrices take
    `out_type` (F16 where a row does not fit its blocks)."""
    if values.dtype.kind in "iu":
        return values.astype(np.int32), GGMLQuantizationType.I32
    values = values.astype(np.float32, copy=False)
    qtype, _ = OUT_TYPES[out_type]
    keep_f32 = bool(name) and (name.endswith(F32_MATRICES) or not name.endswith(".weight"))
    if values.ndim <= 1 or qtype == GGMLQuantizationType.F32 or keep_f32:
        return values, GGMLQuantizationType.F32
    try:
        return quantize(values, qtype), qtype
    except QuantError:
        return values.astype(np.float16), GGMLQuantizationType.F16


def check_out_type(out_type: str) -> None:
    if out_type not in OUT_TYPES:
        raise UsageError(f"--out-type {out_type!r} is not supported; use {', '.join(OUT_TYPES)}")


def write_gguf(
    path: str | Path,
    arch: str,
    entries: Iterable[Entry],
    tensors: Iterable[tuple[str, np.ndarray, GGMLQuantizationType]],
) -> Path:
    """Write through `atomic.atomic_write`: a crash never leaves half a file at `path`."""
    path = Path(path)
    with atomic_write(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        for entry in entries:
            if entry.key != K.ARCHITECTURE:
                writer.add_key_value(entry.key, entry.value, entry.type, sub_type=entry.sub_type)
        for name, data, qtype in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


class LazyTensor(NamedTuple):
    """A tensor whose bytes are made only when the writer reaches it (one tensor in memory at a time)."""

    name: str
    shape: tuple[int, ...]  # numpy order (GGUF's dims reversed)
    qtype: GGMLQuantizationType
    n_bytes: int
    load: Callable[[], np.ndarray]  # the tensor's bytes in `qtype` (any dtype, n_bytes long)


def write_gguf_lazy(
    path: str | Path,
    arch: str,
    entries: Iterable[Entry],
    tensors: Sequence[LazyTensor],
    *,
    alignment: int | None = None,
    on_tensor: Callable[[LazyTensor], None] | None = None,
) -> Path:
    """Like `write_gguf`, but each tensor is loaded (e.g. quantized) just before it is written, and
    `on_tensor` is called after each one. `alignment` keeps a source file's general.alignment."""
    path = Path(path)
    with atomic_write(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        if alignment is not None:
            writer.data_alignment = alignment
        for entry in entries:
            if entry.key != K.ARCHITECTURE:
                writer.add_key_value(entry.key, entry.value, entry.type, sub_type=entry.sub_type)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            data = np.ascontiguousarray(t.load()).reshape(-1).view(np.uint8)
            if data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name}: {data.nbytes} bytes made, {t.n_bytes} announced")
            writer.write_tensor_data(data)
            if on_tensor is not None:
                on_tensor(t)
        writer.close()
    return path
