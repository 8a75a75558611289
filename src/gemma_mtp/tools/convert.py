"""Conversions: a HF checkpoint -> GGUF (targets and drafters, any drafter layout, with the
checkpoint's tokenizer and chat template when it has them), and a drafter GGUF -> another drafter
layout (tensor bytes copied unchanged)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from safetensors import safe_open

from ..config import FULL, AssistantConfig, TextConfig, load_config
from ..errors import ModelFormatError, UsageError
from ..gguf.general import general_entries
from ..gguf.keys import DEFAULT_LAYOUT, DRAFTER_LAYOUTS, LAYOUT_BY_ARCH, LAYOUT_ONLY_KEYS, K
from ..gguf.metadata import config_from_gguf
from ..gguf.mistagged import mistagged_layout
from ..gguf.names import DRAFTER_HEADS, ROPE_FREQS, name_map, norm_offset
from ..gguf.reader import GGUFFile, open_gguf
from ..gguf.vocab import tokenizer_entries
from ..gguf.writer import (
    DEFAULT_OUT_TYPE,
    Entry,
    check_out_type,
    drafter_entries,
    encode_tensor,
    metadata_entries,
    rope_freqs_table,
    write_gguf,
)
from ..weights.hf import SKIPPED_PREFIXES, TARGET_PREFIXES, safetensors_files
from .paths import check_output, gguf_input

__all__ = ["convert_hf_to_gguf", "convert_drafter_layout", "LAYOUTS", "CENTROID_TENSORS"]

LAYOUTS = tuple(DRAFTER_LAYOUTS)
# Our names of the centroid head's two tensors (llama.cpp's converter drops both).
CENTROID_TENSORS = ("masked_embedding.centroids.weight", "masked_embedding.token_ordering")
# The one layout whose engine refuses the centroid tensors: llama.cpp's loader fails on them
# (`vector::_M_range_check`), so mainline output leaves them out unless asked to keep them.
CENTROIDS_UNREADABLE = {"mainline": "llama.cpp"}


def drops_centroids(layout: str, keep_centroids: bool) -> bool:
    return layout in CENTROIDS_UNREADABLE and not keep_centroids


def centroid_notice(layout: str, kept: bool) -> str:
    """What a user must know when a centroid drafter is written in `layout`."""
    engine = CENTROIDS_UNREADABLE[layout]
    if kept:
        return (
            f"kept the centroid head (--keep-centroids): {engine} cannot load this {layout} file "
            "(it refuses the masked_embd_* tensors); gemma-mtp reads it"
        )
    return (
        f"left out the centroid head so that {engine} can load this {layout} file; drafting then "
        "computes the full vocabulary head (--keep-centroids keeps it, for gemma-mtp only)"
    )


def _check_layout(layout: str) -> None:
    if layout not in DRAFTER_LAYOUTS:
        raise UsageError(f"--layout {layout!r} is not supported; use {', '.join(DRAFTER_LAYOUTS)}")


def _rope_freqs(config: TextConfig | AssistantConfig, layout: str) -> np.ndarray | None:
    """The derived proportional-RoPE tensor, where the target family / drafter layout carries one."""
    text = config.text if isinstance(config, AssistantConfig) else config
    if text.family == "gemma3" or (config.is_assistant and not DRAFTER_LAYOUTS[layout].rope_freqs):
        return None
    full = [s for s in text.layers if s.kind == FULL]
    if not full:
        return None
    return rope_freqs_table(full[0].head_dim, text.rope[FULL].partial_rotary_factor)


# Checkpoint tensors that are not ours: the tied head; KV of KV-shared layers (transformers ignores them).
TIED_HEAD = "lm_head.weight"
SHARED_LAYER_KV = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")


def _our_name(name: str, config: TextConfig | AssistantConfig, shared_layers: set[int]) -> str | None:
    """Checkpoint name -> our state_dict name (the HF loader's prefix rules); None to skip."""
    if name == TIED_HEAD or name.startswith(SKIPPED_PREFIXES):
        return None
    if not config.is_assistant:
        for src, dst in TARGET_PREFIXES:
            if name.startswith(src):
                name = dst + name[len(src) :]
                break
    parts = name.split(".", 2)
    if parts[0] == "layers" and int(parts[1]) in shared_layers and parts[2] in SHARED_LAYER_KV:
        return None
    return name


def _hf_tensors(src: Path, config: TextConfig | AssistantConfig) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint under our names, strictly checked against the config."""
    from ..weights.gguf_loader import empty_model  # weights.gguf_loader imports this package

    expected = empty_model(config).state_dict()
    text = config.text if isinstance(config, AssistantConfig) else config
    shared_layers = {s.index for s in text.layers if not s.owns_kv} if not config.is_assistant else set()
    out: dict[str, np.ndarray] = {}
    for f in safetensors_files(src):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                ours = _our_name(name, config, shared_layers)
                if ours is None:
                    continue
                if ours not in expected:
                    raise ModelFormatError(
                        f"{f}: unexpected tensor {name}; the weights do not match config.json"
                    )
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[ours].shape):
                    raise ModelFormatError(
                        f"{f}: tensor {name} has shape {list(tensor.shape)}, the config expects "
                        f"{list(expected[ours].shape)}"
                    )
                out[ours] = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    missing = [k for k in expected if k not in out]
    if missing:
        raise ModelFormatError(f"{src}: missing tensor {missing[0]}; the checkpoint is incomplete")
    return {k: out[k] for k in expected}


def _encoded(
    tensors: dict[str, np.ndarray], config: TextConfig | AssistantConfig, layout: str, out_type: str
) -> Iterator[tuple[str, np.ndarray, GGMLQuantizationType]]:
    text = config.text if isinstance(config, AssistantConfig) else config
    names = name_map(config, layout)
    for ours, values in tensors.items():
        offset = norm_offset(text.family, ours)
        if offset:
            values = values + np.float32(offset)  # llama.cpp stores Gemma 3 norms as 1 + w
        data, qtype = encode_tensor(values, out_type, names[ours])
        yield names[ours], data, qtype
    freqs = _rope_freqs(config, layout)
    if freqs is not None:
        yield ROPE_FREQS, freqs, GGMLQuantizationType.F32


def _dense_config(config: AssistantConfig) -> AssistantConfig:
    from dataclasses import replace

    return replace(config, use_ordered_embeddings=False)


def convert_hf_to_gguf(
    src_dir: str | Path,
    out_path: str | Path,
    *,
    layout: str = DEFAULT_LAYOUT,
    out_type: str = DEFAULT_OUT_TYPE,
    keep_centroids: bool = False,
    notices: list[str] | None = None,
) -> Path:
    """HF checkpoint (target or assistant) -> GGUF. A centroid drafter keeps its centroid tensors,
    except in mainline without `keep_centroids` (llama.cpp cannot load them); what was decided is
    appended to `notices`. A tokenizer.json in `src_dir` is embedded with its chat template
    (`vocab.tokenizer_entries`); where config.json and the tokenizer both give a special token id,
    config.json's is kept. `general.*` follows llama.cpp's converter (`gguf.general`)."""
    _check_layout(layout)
    check_out_type(out_type)
    src = Path(src_dir)
    check_output(src, out_path)  # before the checkpoint is read
    config = load_config(src)
    vocab = tokenizer_entries(src, config)  # before the tensors: a bad tokenizer fails fast
    tensors = _hf_tensors(src, config)
    had_centroids = False
    if isinstance(config, AssistantConfig) and config.use_ordered_embeddings:
        dropped = drops_centroids(layout, keep_centroids)
        if layout in CENTROIDS_UNREADABLE and notices is not None:
            notices.append(centroid_notice(layout, kept=not dropped))
        if dropped:
            had_centroids = True
            config = _dense_config(config)
            tensors = {k: v for k, v in tensors.items() if k not in CENTROID_TENSORS}
    arch, entries = metadata_entries(config, layout=layout, out_type=out_type, had_centroids=had_centroids)
    encoded = list(_encoded(tensors, config, layout, out_type))
    shapes = [
        (name, tensors[ours].shape) for ours, name in name_map(config, layout).items() if ours in tensors
    ]
    shapes += [(name, data.shape) for name, data, _ in encoded if name == ROPE_FREQS]
    entries = [
        Entry("general.type", "model", GGUFValueType.STRING),
        *general_entries(src, arch, shapes),
        *entries,
    ]
    have = {entry.key for entry in entries}
    entries += [entry for entry in vocab if entry.key not in have]
    return write_gguf(out_path, arch, entries, encoded)


def _copied_entries(gf: GGUFFile, src_arch: str, dst_arch: str) -> list[Entry]:
    """Every key but the layout's own, the architecture prefix swapped; types kept."""
    out = []
    for key in gf.fields:
        if key == K.ARCHITECTURE:
            continue
        if key.startswith(src_arch + "."):
            suffix = key[len(src_arch) + 1 :]
            if suffix in LAYOUT_ONLY_KEYS:
                continue
            new_key = f"{dst_arch}.{suffix}"
        else:
            new_key = key
        field = gf.fields[key]
        out.append(Entry(new_key, field.value, field.type, field.sub_type))
    return out


def convert_drafter_layout(
    in_gguf: str | Path,
    out_gguf: str | Path,
    layout: str,
    *,
    keep_centroids: bool = False,
    centroids_from: str | Path | None = None,
    notices: list[str] | None = None,
) -> Path:
    """A drafter GGUF in any layout (also one mis-tagged `gemma4`, see `gguf.mistagged`) -> the same
    drafter in `layout`; tensor data is copied byte for byte. A centroid head is left out of
    mainline output unless `keep_centroids`; `centroids_from` (the HF assistant directory) puts the
    head back (kept in every layout: asking for it is asking to keep it)."""
    _check_layout(layout)
    check_output(in_gguf, out_gguf)
    gf = open_gguf(gguf_input(in_gguf, "convert"))
    if gf.arch not in LAYOUT_BY_ARCH and mistagged_layout(gf) is None:
        raise ModelFormatError(
            f"{gf.path}: general.architecture {gf.arch!r} is not a drafter; layouts apply to "
            f"{', '.join(sorted(LAYOUT_BY_ARCH))}"
        )
    config, src_layout, _ = config_from_gguf(gf, mistagged_ok=True)
    assert isinstance(config, AssistantConfig) and src_layout is not None
    dst = DRAFTER_LAYOUTS[layout]
    head = None
    if centroids_from is not None:
        from .centroids import hf_centroid_head

        head = hf_centroid_head(centroids_from)
        head.check_fits(config, str(gf.path))
        config, keep_centroids = head.applied(config), True
    src_centroids = {DRAFTER_HEADS[src_layout][name] for name in CENTROID_TENSORS}
    had_centroids = False
    if config.use_ordered_embeddings:
        if layout in CENTROIDS_UNREADABLE and notices is not None:
            notices.append(centroid_notice(layout, kept=keep_centroids))
        if drops_centroids(layout, keep_centroids):
            config, had_centroids = _dense_config(config), True
    entries = _copied_entries(gf, gf.arch, dst.arch) + drafter_entries(
        config, dst.arch, layout, had_centroids=had_centroids
    )
    heads = {theirs: DRAFTER_HEADS[layout][ours] for ours, theirs in DRAFTER_HEADS[src_layout].items()}
    tensors = []
    for name, t in gf.tensors.items():
        if (name == ROPE_FREQS and not dst.rope_freqs) or (name in src_centroids and (head or had_centroids)):
            continue
        tensors.append((heads.get(name, name), np.asarray(t.data), t.tensor_type))  # raw bytes
    if head is not None:
        names = DRAFTER_HEADS[layout]
        tensors.append((names[CENTROID_TENSORS[0]], head.centroids, GGMLQuantizationType.F32))
        tensors.append((names[CENTROID_TENSORS[1]], head.ordering.astype(np.int32), GGMLQuantizationType.I32))
    freqs = _rope_freqs(config, layout)
    if freqs is not None and ROPE_FREQS not in gf.tensors:
        tensors.append((ROPE_FREQS, freqs, GGMLQuantizationType.F32))
    return write_gguf(out_gguf, dst.arch, entries, tensors)
