"""llama.cpp's mmproj GGUF for the Gemma 4 vision tower (`general.architecture = clip`,
`clip.vision.projector_type = gemma4v`): read into a `VisionModel`, and written from a HF checkpoint.

The layout is what llama.cpp's converter (`Gemma4VisionAudioModel`) writes: names below (data),
`v.patch_embd.weight` as [width, 3, patch, patch] (channels first, where the checkpoint's
`input_proj` reads patches as (row, col, channel)), scalar clip bounds as 1-element tensors.
Metadata carries no kv-head count, pooling size or RoPE theta: kv heads come from `attn_k`'s shape,
the pooling size from `clip.vision.projector.scale_factor` (llama.cpp's default 3) and theta is
llama.cpp's fixed 100 (transformers' default). The audio tower's tensors (`a.*`, `mm.a.*`) and
keys are `weights.mmproj_audio`'s; `write_mmproj` writes both towers when the checkpoint has both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import ModelFormatError
from ..gguf.reader import GGUFFile, open_gguf, tensor_shape, tensor_values
from ..gguf.writer import Entry, encode_tensor, write_gguf
from ..models.vision import VisionConfig, VisionModel
from .mmproj_audio import is_audio_tensor
from .placement import resolve_dtype
from .towers import build_vision, finish_vision, load_state_strict, read_vision_config

__all__ = ["MMPROJ_NAMES", "load_mmproj_vision", "write_mmproj", "is_vision_mmproj", "mmproj_config"]

V = "clip.vision."
# our module path (prefix) -> GGUF name (prefix); {i} is the layer
MMPROJ_NAMES = {
    "vision_tower.patch_embedder.input_proj.weight": "v.patch_embd.weight",
    "vision_tower.patch_embedder.position_embedding_table": "v.position_embd.weight",
    "vision_tower.std_bias": "v.std_bias",
    "vision_tower.std_scale": "v.std_scale",
    "embed_vision.embedding_projection.weight": "mm.input_projection.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "ln1.weight",
    "post_attention_layernorm.weight": "attn_post_norm.weight",
    "pre_feedforward_layernorm.weight": "ln2.weight",
    "post_feedforward_layernorm.weight": "ffn_post_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_out",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
CLIPS = ("input_min", "input_max", "output_min", "output_max")


def gguf_name(ours: str) -> str:
    """Our state_dict name -> the mmproj tensor name."""
    if ours in MMPROJ_NAMES:
        return MMPROJ_NAMES[ours]
    parts = ours.split(".")
    if parts[:3] != ["vision_tower", "encoder", "layers"]:
        raise KeyError(ours)
    layer, rest = parts[3], ".".join(parts[4:])
    if rest in LAYER_NAMES:
        return f"v.blk.{layer}.{LAYER_NAMES[rest]}"
    module, _, leaf = rest.rpartition(".")
    if module.endswith(".linear"):  # <linear>.linear.weight
        return f"v.blk.{layer}.{LINEARS[module.removesuffix('.linear')]}.{leaf}"
    return f"v.blk.{layer}.{LINEARS[module]}.{leaf}"  # clip bounds


def is_vision_mmproj(gguf: GGUFFile) -> bool:
    return gguf.arch == "clip" and bool(gguf.value("clip.has_vision_encoder"))


def mmproj_config(gguf: GGUFFile) -> VisionConfig:
    path = gguf.path
    kind = gguf.value(V + "projector_type") or gguf.value("clip.projector_type")
    if gguf.arch != "clip" or not gguf.value("clip.has_vision_encoder"):
        raise ModelFormatError(
            f"{path}: not a vision mmproj (general.architecture {gguf.arch!r}, no clip.has_vision_encoder)"
        )
    if kind == "gemma4uv":
        raise ModelFormatError(
            f"{path}: vision projector_type 'gemma4uv' is the 12B unified model's encoder-free embedder "
            "(raw image patches), which gemma-mtp does not run; images work with gemma4v towers"
        )
    if kind != "gemma4v":
        raise ModelFormatError(f"{path}: vision projector_type {kind!r} is not supported (gemma4v)")

    def need(key: str) -> int:
        value = gguf.value(V + key)
        if value is None:
            raise ModelFormatError(f"{path}: missing metadata key {V + key}")
        return int(value)

    hidden, heads = need("embedding_length"), need("attention.head_count")
    head_dim = hidden // heads
    k = gguf.tensors.get("v.blk.0.attn_k.weight")
    kv_heads = tensor_shape(k)[0] // head_dim if k is not None else heads
    table = gguf.tensors.get("v.position_embd.weight")
    if table is None:
        raise ModelFormatError(f"{path}: missing tensor v.position_embd.weight")
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=need("feed_forward_length"),
        num_layers=need("block_count"),
        num_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        patch_size=need("patch_size"),
        pooling_kernel_size=int(gguf.value(V + "projector.scale_factor", 3)),
        position_embedding_size=tensor_shape(table)[1],
        rope_theta=100.0,
        rms_norm_eps=float(gguf.value(V + "attention.layer_norm_epsilon", 1e-6)),
        hidden_activation="gelu_pytorch_tanh",
        use_clipped_linears="v.blk.0.attn_q.input_min" in gguf.tensors,
        standardize="v.std_bias" in gguf.tensors,
        text_hidden_size=need("projection_dim"),
    )


def _to_ours(name: str, values: np.ndarray, config: VisionConfig) -> torch.Tensor:
    t = torch.from_numpy(np.array(values))  # a copy: the file is memory-mapped read-only
    if name == MMPROJ_NAMES["vision_tower.patch_embedder.input_proj.weight"]:
        # [width, 3, p, p] -> [width, p * p * 3] in (row, col, channel) order
        return t.permute(0, 2, 3, 1).reshape(config.hidden_size, -1)
    if name.endswith(CLIPS):
        return t.reshape(())
    return t


def load_mmproj_vision(path: str | Path, *, dtype: str = "auto", device: str = "cpu") -> VisionModel:
    """The vision tower + embedder of a llama.cpp mmproj file, strictly (every tensor by name)."""
    gguf = open_gguf(path)
    config = mmproj_config(gguf)
    model = build_vision(config)
    names = {gguf_name(ours): ours for ours in model.state_dict()}
    tensors: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, info in gguf.tensors.items():
        if is_audio_tensor(name):  # the audio tower: load_mmproj_audio
            continue
        if name not in names:
            unexpected.append(name)
            continue
        tensors[names[name]] = _to_ours(name, tensor_values(info), config)
    if unexpected:
        raise ModelFormatError(f"{path}: unexpected tensor {unexpected[0]} for a gemma4v vision tower")
    missing = [g for g, ours in names.items() if ours not in tensors]
    if missing:
        raise ModelFormatError(f"{path}: missing tensor {missing[0]}; the mmproj file is incomplete")
    want = torch.float32 if dtype == "auto" else resolve_dtype(dtype)
    load_state_strict(model, tensors, str(path), want)
    return finish_vision(model, device)


def _vision_entries(config: VisionConfig, name: str, file_type: int) -> list[Entry]:
    u32, f32, s = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    b = GGUFValueType.BOOL
    return [
        Entry("general.type", "mmproj", s),
        Entry("general.name", name, s),
        Entry("general.file_type", file_type, u32),
        Entry("clip.has_vision_encoder", True, b),
        Entry(V + "projection_dim", config.text_hidden_size, u32),
        Entry(V + "image_size", 224, u32),  # unused by gemma4v; llama.cpp requires the key
        Entry(V + "patch_size", config.patch_size, u32),
        Entry(V + "embedding_length", config.hidden_size, u32),
        Entry(V + "feed_forward_length", config.intermediate_size, u32),
        Entry(V + "block_count", config.num_layers, u32),
        Entry(V + "attention.head_count", config.num_heads, u32),
        Entry(V + "image_mean", [0.0, 0.0, 0.0], GGUFValueType.ARRAY, f32),
        Entry(V + "image_std", [1.0, 1.0, 1.0], GGUFValueType.ARRAY, f32),
    ]


def _vision_projector_entries(config: VisionConfig) -> list[Entry]:
    return [
        Entry(V + "projector_type", "gemma4v", GGUFValueType.STRING),
        Entry(V + "attention.layer_norm_epsilon", config.rms_norm_eps, GGUFValueType.FLOAT32),
    ]


def _vision_tensors(
    model: VisionModel, out_type: str
) -> Iterator[tuple[str, np.ndarray, GGMLQuantizationType]]:
    config = model.config
    for ours, value in sorted(model.state_dict().items()):
        name = gguf_name(ours)
        v = value.float()
        if ours.endswith("patch_embedder.input_proj.weight"):
            p = config.patch_size
            v = v.reshape(config.hidden_size, p, p, 3).permute(0, 3, 1, 2)
        elif ours.endswith(CLIPS):
            v = v.reshape(1)
        kind = "F32" if name.startswith("v.position_embd") else out_type
        if name == "v.patch_embd.weight":  # llama.cpp: F16 for --outtype f16, else F32
            kind = "F16" if out_type == "F16" else "F32"
        data, qtype = encode_tensor(v.contiguous().numpy(), kind, name)
        yield name, data, qtype


def write_mmproj(hf_dir: str | Path, out: str | Path, *, out_type: str = "F32") -> Path:
    """The media towers of a HF Gemma 4 checkpoint as a llama.cpp mmproj GGUF (what its converter's
    `--mmproj` writes): the vision tower, and the audio tower too when the checkpoint has one.
    Matrices take `out_type`; norms, clip bounds, the position table, the patch embedding (F16 at
    `out_type` F16) and the audio convolutions stay F32."""
    from ..gguf.writer import OUT_TYPES
    from .mmproj_audio import audio_entries, audio_projector_entries, audio_tensors, check_writable
    from .towers import has_hf_audio, load_hf_audio, load_hf_vision, read_audio_config

    hf_dir = Path(hf_dir)
    config = read_vision_config(hf_dir)  # (llama.cpp's converter, too, needs a vision tower)
    if config.head_dim * config.num_heads != config.hidden_size:
        raise ModelFormatError(
            f"{hf_dir}: vision head_dim {config.head_dim} x {config.num_heads} heads != width "
            f"{config.hidden_size}; an mmproj cannot say so (llama.cpp derives head_dim)"
        )
    audio_config = read_audio_config(hf_dir) if has_hf_audio(hf_dir) else None
    if audio_config is not None:
        check_writable(audio_config, str(hf_dir))
    vision = load_hf_vision(hf_dir, dtype="float32")
    audio = load_hf_audio(hf_dir, dtype="float32") if audio_config is not None else None
    file_type = int(OUT_TYPES[out_type][1])
    entries = _vision_entries(config, hf_dir.name, file_type)
    if audio_config is not None:
        entries += audio_entries(audio_config)
    entries += _vision_projector_entries(config)
    if audio_config is not None:
        entries += audio_projector_entries(audio_config)
    entries.append(Entry("general.quantization_version", 2, GGUFValueType.UINT32))

    def tensors() -> Iterator[tuple[str, np.ndarray, GGMLQuantizationType]]:
        # in the checkpoint's (sorted) order, as llama.cpp's converter writes them: model.audio_tower,
        # model.embed_audio, then the vision tensors
        if audio is not None:
            yield from audio_tensors(dict(sorted(audio.state_dict().items())), out_type)
        yield from _vision_tensors(vision, out_type)

    return write_gguf(out, "clip", entries, tensors())
