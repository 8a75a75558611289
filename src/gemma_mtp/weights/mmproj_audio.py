"""The Gemma 4 audio tower in llama.cpp's mmproj GGUF (`clip.has_audio_encoder`,
`clip.audio.projector_type = gemma4a`): read into an `AudioModel`, and its keys and tensors for
`weights.mmproj.write_mmproj`.

The layout is what llama.cpp's converter (`Gemma4VisionAudioModel`) writes: names below (data; the
checkpoint's `lconv1d.pre_layer_norm` / `lconv1d.conv_norm` land on `conv_norm` / `norm_conv`, its
tensor map has them swapped and its loader swaps them back), `per_dim_scale` stored after its
softplus, the depthwise convolution as [width, kernel], clip bounds as 1-element tensors, the
convolutions and the subsampling projection always F32. Metadata carries the width, layers, heads,
mel bins and the text width; llama.cpp's graph (`clip_graph_gemma4a`) hard-codes the rest, as
`FIXED` below (transformers' defaults, which every released tower uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import ModelFormatError
from ..gguf.reader import GGUFFile, open_gguf, tensor_shape, tensor_values
from ..gguf.writer import Entry, encode_tensor
from ..models.audio import AudioConfig, AudioModel
from .placement import resolve_device, resolve_dtype
from .towers import load_state_strict

__all__ = [
    "AUDIO_NAMES",
    "FIXED",
    "audio_gguf_name",
    "is_audio_mmproj",
    "mmproj_audio_config",
    "load_mmproj_audio",
    "audio_entries",
    "audio_projector_entries",
    "audio_tensors",
    "check_writable",
]

A = "clip.audio."
# our state_dict name -> GGUF name, for the tensors outside the conformer layers
AUDIO_NAMES = {
    "audio_tower.subsample_conv_projection.layer0.conv.weight": "a.conv1d.0.weight",
    "audio_tower.subsample_conv_projection.layer0.norm.weight": "a.conv1d.0.norm.weight",
    "audio_tower.subsample_conv_projection.layer1.conv.weight": "a.conv1d.1.weight",
    "audio_tower.subsample_conv_projection.layer1.norm.weight": "a.conv1d.1.norm.weight",
    "audio_tower.subsample_conv_projection.input_proj_linear.weight": "a.input_projection.weight",
    "audio_tower.output_proj.weight": "a.pre_encode.out.weight",
    "audio_tower.output_proj.bias": "a.pre_encode.out.bias",
    "embed_audio.embedding_projection.weight": "mm.a.input_projection.weight",
}
# per layer (`audio_tower.layers.{i}.` -> `a.blk.{i}.`): plain tensors
LAYER_NAMES = {
    "feed_forward1.pre_layer_norm.weight": "ffn_norm.weight",
    "feed_forward1.post_layer_norm.weight": "ffn_post_norm.weight",
    "feed_forward2.pre_layer_norm.weight": "ffn_norm_1.weight",
    "feed_forward2.post_layer_norm.weight": "ffn_post_norm_1.weight",
    "self_attn.per_dim_scale": "per_dim_scale.weight",  # stored as softplus(per_dim_scale)
    "self_attn.relative_k_proj.weight": "attn_k_rel.weight",
    "lconv1d.depthwise_conv1d.weight": "conv_dw.weight",  # [d, 1, k] stored as [d, k]
    "lconv1d.pre_layer_norm.weight": "conv_norm.weight",
    "lconv1d.conv_norm.weight": "norm_conv.weight",
    "norm_pre_attn.weight": "attn_pre_norm.weight",
    "norm_post_attn.weight": "attn_post_norm.weight",
    "norm_out.weight": "ln2.weight",
}
# per layer: clipped linears (`<module>.linear.weight` -> `<name>.weight`, bounds keep their leaf)
LINEARS = {
    "feed_forward1.ffw_layer_1": "ffn_up",
    "feed_forward1.ffw_layer_2": "ffn_down",
    "feed_forward2.ffw_layer_1": "ffn_up_1",
    "feed_forward2.ffw_layer_2": "ffn_down_1",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.post": "attn_out",
    "lconv1d.linear_start": "conv_pw1",
    "lconv1d.linear_end": "conv_pw2",
}
CLIPS = ("input_min", "input_max", "output_min", "output_max")
# What llama.cpp's graph hard-codes (an mmproj has no key for them): AudioConfig field -> value.
FIXED = {
    "hidden_activation": "silu",
    "residual_weight": 0.5,
    "chunk_size": 12,
    "context_left": 13,
    "context_right": 0,
    "logit_cap": 50.0,
    "rms_norm_eps": 1e-6,
    "gradient_clipping": 1e10,  # (llama.cpp clips nothing: transformers' default never binds)
    "invalid_logit": -1.0e9,
}
# kept F32 at every --outtype, as llama.cpp's converter forces them (the convolutions)
F32_NAMES = ("a.conv1d.", "a.input_projection.weight")
F32_SUFFIXES = (".conv_dw.weight",)


def audio_gguf_name(ours: str) -> str:
    """Our AudioModel state_dict name -> the mmproj tensor name (KeyError for any other name)."""
    if ours in AUDIO_NAMES:
        return AUDIO_NAMES[ours]
    parts = ours.split(".")
    if parts[:2] != ["audio_tower", "layers"]:
        raise KeyError(ours)
    layer, rest = parts[2], ".".join(parts[3:])
    if rest in LAYER_NAMES:
        return f"a.blk.{layer}.{LAYER_NAMES[rest]}"
    module, _, leaf = rest.rpartition(".")
    if module.endswith(".linear"):  # <linear>.linear.weight
        return f"a.blk.{layer}.{LINEARS[module.removesuffix('.linear')]}.{leaf}"
    return f"a.blk.{layer}.{LINEARS[module]}.{leaf}"  # clip bounds


def is_audio_tensor(name: str) -> bool:
    return name.startswith(("a.", "mm.a."))


def is_audio_mmproj(gguf: GGUFFile) -> bool:
    return gguf.arch == "clip" and bool(gguf.value("clip.has_audio_encoder"))


def mmproj_audio_config(gguf: GGUFFile) -> AudioConfig:
    """The tower's config from an mmproj: sizes from metadata and tensor shapes, the rest `FIXED`."""
    path = gguf.path
    if not is_audio_mmproj(gguf):
        raise ModelFormatError(
            f"{path}: not an audio mmproj (general.architecture {gguf.arch!r}, no clip.has_audio_encoder); "
            "audio needs an mmproj converted from a Gemma 4 checkpoint with an audio tower (E2B or E4B)"
        )
    kind = gguf.value(A + "projector_type") or gguf.value("clip.projector_type")
    if kind == "gemma4ua":
        raise ModelFormatError(
            f"{path}: audio projector_type 'gemma4ua' is the 12B unified model's encoder-free embedder "
            "(raw waveform frames), which gemma-mtp does not run; audio works with E2B/E4B (gemma4a)"
        )
    if kind != "gemma4a":
        raise ModelFormatError(f"{path}: audio projector_type {kind!r} is not supported (gemma4a)")

    def need(key: str) -> int:
        value = gguf.value(A + key)
        if value is None:
            raise ModelFormatError(f"{path}: missing metadata key {A + key}")
        return int(value)

    def shape(name: str) -> tuple[int, ...]:
        info = gguf.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"{path}: missing tensor {name}; the mmproj file is incomplete")
        return tensor_shape(info)

    hidden = need("embedding_length")
    if need("feed_forward_length") != 4 * hidden:
        raise ModelFormatError(
            f"{path}: {A}feed_forward_length {need('feed_forward_length')} is not 4 x "
            f"{A}embedding_length {hidden}, as the Gemma 4 audio tower has"
        )
    return AudioConfig(
        hidden_size=hidden,
        num_layers=need("block_count"),
        num_heads=need("attention.head_count"),
        subsampling_conv_channels=(shape("a.conv1d.0.weight")[0], shape("a.conv1d.1.weight")[0]),
        conv_kernel_size=shape("a.blk.0.conv_dw.weight")[-1],
        use_clipped_linears="a.blk.0.attn_q.input_min" in gguf.tensors,
        output_proj_dims=shape("a.pre_encode.out.weight")[0],
        text_hidden_size=need("projection_dim"),
        **FIXED,  # type: ignore[arg-type]
    )


def mel_bins(gguf: GGUFFile) -> int:
    return int(gguf.value(A + "num_mel_bins", 128))


def _inverse_softplus(values: np.ndarray) -> torch.Tensor:
    """per_dim_scale from its stored softplus (float64, so that softplus gives the stored value back)."""
    w = values.astype(np.float64)
    return torch.from_numpy(w + np.log(-np.expm1(-w))).float()


def _to_ours(name: str, values: np.ndarray, config: AudioConfig) -> torch.Tensor:
    if name.endswith(".per_dim_scale.weight"):
        return _inverse_softplus(values)
    t = torch.from_numpy(np.array(values))  # a copy: the file is memory-mapped read-only
    if name.endswith(".conv_dw.weight"):
        return t.reshape(config.hidden_size, 1, -1)
    if name.endswith(CLIPS):
        return t.reshape(())
    return t


def load_mmproj_audio(path: str | Path, *, dtype: str = "auto", device: str = "cpu") -> AudioModel:
    """The audio tower + embedder of a llama.cpp mmproj file, strictly: every `a.*` / `mm.a.*`
    tensor by name (the vision tensors are `load_mmproj_vision`'s)."""
    gguf = open_gguf(path)
    config = mmproj_audio_config(gguf)
    with torch.device("meta"):
        model = AudioModel(config)
    names = {audio_gguf_name(ours): ours for ours in model.state_dict()}
    tensors: dict[str, torch.Tensor] = {}
    for name, info in gguf.tensors.items():
        if not is_audio_tensor(name):
            continue
        if name not in names:
            raise ModelFormatError(f"{path}: unexpected tensor {name} for a gemma4a audio tower")
        tensors[names[name]] = _to_ours(name, tensor_values(info), config)
    missing = [g for g, ours in names.items() if ours not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f"{path}: missing tensor {missing[0]}{more}; the mmproj file is incomplete")
    want = torch.float32 if dtype == "auto" else resolve_dtype(dtype)
    load_state_strict(model, tensors, str(path), want)
    model.to(resolve_device(device))
    model.eval()
    model.requires_grad_(False)
    return model


# -- writing ----------------------------------------------------------------------------------


def check_writable(config: AudioConfig, source: str) -> None:
    """ModelFormatError when the tower differs from what llama.cpp's graph hard-codes: an mmproj
    cannot say so, and every reader (llama.cpp, ours) would run another tower."""
    for key, value in FIXED.items():
        if getattr(config, key) != value:
            raise ModelFormatError(
                f"{source}: audio {key} {getattr(config, key)!r} is not {value!r}; an mmproj has no key "
                "for it (llama.cpp fixes it), so this tower cannot be written as one"
            )


def audio_entries(config: AudioConfig) -> list[Entry]:
    """The `clip.has_audio_encoder` block (after the vision sizes, as llama.cpp writes it)."""
    u32 = GGUFValueType.UINT32
    return [
        Entry("clip.has_audio_encoder", True, GGUFValueType.BOOL),
        Entry(A + "projection_dim", config.text_hidden_size, u32),
        Entry(A + "embedding_length", config.hidden_size, u32),
        Entry(A + "feed_forward_length", 4 * config.hidden_size, u32),
        Entry(A + "block_count", config.num_layers, u32),
        Entry(A + "attention.head_count", config.num_heads, u32),
    ]


def audio_projector_entries(config: AudioConfig) -> list[Entry]:
    """The projector keys (after the vision projector's)."""
    raw = config.raw or {}
    return [
        Entry(A + "projector_type", "gemma4a", GGUFValueType.STRING),
        # llama.cpp's converter: the config's input_feat_size, else 128 (the extractor's mel bins)
        Entry(A + "num_mel_bins", int(raw.get("input_feat_size", 128)), GGUFValueType.UINT32),
        Entry(A + "attention.layer_norm_epsilon", config.rms_norm_eps, GGUFValueType.FLOAT32),
    ]


def _stored(ours: str, value: torch.Tensor) -> torch.Tensor:
    v = value.float()
    if ours.endswith("self_attn.per_dim_scale"):
        return torch.nn.functional.softplus(v)
    if ours.endswith("depthwise_conv1d.weight"):
        return v.reshape(v.shape[0], v.shape[2])
    if ours.endswith(CLIPS):
        return v.reshape(1)
    return v


def audio_tensors(
    state: dict[str, torch.Tensor], out_type: str
) -> Iterator[tuple[str, np.ndarray, GGMLQuantizationType]]:
    """(name, data, type) for one AudioModel state_dict entry each, in the given order."""
    for ours, value in state.items():
        name = audio_gguf_name(ours)
        kind = "F32" if name.startswith(F32_NAMES) or name.endswith(F32_SUFFIXES) else out_type
        data, qtype = encode_tensor(_stored(ours, value).contiguous().numpy(), kind, name)
        yield name, data, qtype
