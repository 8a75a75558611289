"""GGUF metadata -> the config dataclasses the HF loader makes (via a HF-style dict and
`config_from_dict`), and the inverse for the writer.

What a file does not say is filled the way llama.cpp fills it (`src/models/gemma3.cpp`,
`gemma4*.cpp`): Gemma 3 sliding layers every 6th layer full, local RoPE base 10000, attention
scale 1/sqrt(head_dim) (1/sqrt(width/heads) for the 62-layer 27B); Gemma 4's partial rotary factor
of full layers from the `rope_freqs` tensor. Our writer states all of these explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import FULL, SLIDING, AssistantConfig, TextConfig, config_from_dict
from ..errors import ModelFormatError
from .keys import (
    DEFAULT_CENTROID_TOP_K,
    DEFAULT_PARTIAL_ROTARY_FACTOR,
    DRAFTER_LAYOUTS,
    EOG_ID_KEYS,
    EOG_TOKEN_TEXTS,
    LAYOUT_BY_ARCH,
    TARGET_ARCHS,
    K,
)
from .mistagged import backbone_width, mistagged_layout, mistagged_message
from .names import DRAFTER_HEADS, ROPE_FREQS, ROPE_FREQS_ROTATED
from .reader import GGUFFile, tensor_shape, tensor_values

__all__ = ["config_from_gguf", "describe_supported", "drafter_head"]

# llama.cpp's Gemma 3 defaults for what old files do not carry
GEMMA3_SWA_PERIOD = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_27B_LAYERS = 62


def describe_supported() -> str:
    archs = list(TARGET_ARCHS) + [layout.arch for layout in DRAFTER_LAYOUTS.values()]
    return ", ".join(archs)


def config_from_gguf(
    gf: GGUFFile, *, mistagged_ok: bool = False
) -> tuple[TextConfig | AssistantConfig, str | None, list[str]]:
    """(config, drafter layout name or None for a target, notices). A drafter tagged as a gemma4
    target is refused with what it is and the fix, unless `mistagged_ok` (convert rewrites it)."""
    notices: list[str] = []
    mistagged = mistagged_layout(gf)
    if mistagged is not None and not mistagged_ok:
        raise ModelFormatError(mistagged_message(gf, mistagged))
    if gf.arch in TARGET_ARCHS and mistagged is None:
        family = TARGET_ARCHS[gf.arch]
        text = _gemma3_text(gf) if family == "gemma3" else _gemma4_text(gf, notices, assistant=False)
        return config_from_dict(text, source=str(gf.path)), None, notices
    if gf.arch in LAYOUT_BY_ARCH or mistagged is not None:
        layout = DRAFTER_LAYOUTS[mistagged] if mistagged is not None else LAYOUT_BY_ARCH[gf.arch]
        text = _gemma4_text(gf, notices, assistant=True)
        data = {"model_type": "gemma4_assistant", "text_config": text, **_drafter_head(gf, layout, notices)}
        return config_from_dict(data, source=str(gf.path)), layout.name, notices
    raise ModelFormatError(
        f"{gf.path}: general.architecture {gf.arch!r} is not supported; gemma-mtp loads {describe_supported()}"
    )


# ------------------------------------------------------------------------------------- helpers


def _need(gf: GGUFFile, suffix: str) -> Any:
    value = gf.arch_value(suffix)
    if value is None:
        raise ModelFormatError(f"{gf.path}: missing metadata key {gf.arch}.{suffix}")
    return value


def _per_layer(gf: GGUFFile, suffix: str, value: Any, n: int) -> list:
    """A scalar or a per-layer array (llama.cpp's get_key_or_arr) as a list of n values."""
    if isinstance(value, list):
        if len(value) != n:
            raise ModelFormatError(f"{gf.path}: {gf.arch}.{suffix} has {len(value)} entries for {n} layers")
        return value
    return [value] * n


def _rows(gf: GGUFFile, name: str) -> int:
    if name not in gf.tensors:
        raise ModelFormatError(f"{gf.path}: missing tensor {name}; the file is incomplete")
    return tensor_shape(gf.tensors[name])[0]


def _eos_ids(gf: GGUFFile) -> list[int]:
    ids = [gf.value(key) for key in EOG_ID_KEYS]
    tokens = gf.value(K.TOKENS)
    if isinstance(tokens, list):
        ids += [i for i, text in enumerate(tokens) if text in EOG_TOKEN_TEXTS]
    return sorted({int(i) for i in ids if i is not None})


def _special_ids(gf: GGUFFile) -> dict[str, Any]:
    return {
        "eos_token_id": _eos_ids(gf) or [1],
        "bos_token_id": gf.value(K.BOS_ID),
        "pad_token_id": gf.value(K.PAD_ID),
    }


def _float(value: Any) -> float:
    """A float32 metadata value as the decimal it was written from (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def _arch_float(gf: GGUFFile, suffix: str, default: float) -> float:
    return _float(gf.arch_value(suffix, default))


def _softcap(value: Any) -> float | None:
    return _float(value) if value else None


def _rope_scaling(gf: GGUFFile) -> float:
    kind = gf.arch_value(K.ROPE_SCALING_TYPE)
    factor = _float(gf.arch_value(K.ROPE_SCALING_FACTOR) or 1.0)
    if kind in (None, "none") or factor == 1.0:
        return 1.0
    if kind != "linear":
        raise ModelFormatError(
            f"{gf.path}: {gf.arch}.{K.ROPE_SCALING_TYPE} {kind!r} is not supported; use linear"
        )
    return factor


# ------------------------------------------------------------------------------------- Gemma 4


def _kind_value(gf: GGUFFile, suffix: str, values: list, types: list[str], kind: str) -> Any:
    of_kind = {v for v, t in zip(values, types, strict=True) if t == kind}
    if len(of_kind) > 1:
        raise ModelFormatError(f"{gf.path}: {gf.arch}.{suffix} differs between {kind} layers; not supported")
    return of_kind.pop() if of_kind else None


def _partial_rotary_factor(gf: GGUFFile, head_full: int, types: list[str], notices: list[str]) -> float:
    t = gf.tensors.get(ROPE_FREQS)
    if t is None and FULL not in types:
        return DEFAULT_PARTIAL_ROTARY_FACTOR  # unused: no full-attention layer
    if t is None:
        notices.append(
            f"no {ROPE_FREQS} in the file: full-attention layers use the default partial rotary factor "
            f"{DEFAULT_PARTIAL_ROTARY_FACTOR}"
        )
        return DEFAULT_PARTIAL_ROTARY_FACTOR
    values = tensor_values(t).reshape(-1)
    n_rot = int(np.sum(values == ROPE_FREQS_ROTATED))
    if (
        values.size != head_full // 2
        or not np.all(values[:n_rot] == ROPE_FREQS_ROTATED)
        or np.any(values[n_rot:] < 1e20)
    ):
        raise ModelFormatError(
            f"{gf.path}: {ROPE_FREQS} is not a proportional-RoPE table for head dim {head_full} "
            "(expected 1.0 for rotated pairs, then 1e30)"
        )
    return 2 * n_rot / head_full


def _feed_forward(gf: GGUFFile, n: int, n_shared: int, assistant: bool) -> tuple[int, bool]:
    ff = _per_layer(gf, K.FEED_FORWARD_LENGTH, _need(gf, K.FEED_FORWARD_LENGTH), n)
    base = int(ff[0])
    if all(int(v) == base for v in ff):
        return base, False
    double = [base if i < n - n_shared else 2 * base for i in range(n)]
    if not assistant and [int(v) for v in ff] == double:
        return base, True  # use_double_wide_mlp: KV-shared layers have twice the width
    raise ModelFormatError(f"{gf.path}: {gf.arch}.{K.FEED_FORWARD_LENGTH} {ff} is not a supported pattern")


def _k_eq_v(gf: GGUFFile, types: list[str], n_owning: int) -> bool:
    legacy = gf.arch_value(K.K_EQ_V)
    if legacy is not None:
        return bool(legacy)
    # mainline: full layers with attn_k and no attn_v share the projection (31B, 26B-A4B)
    full = [i for i in range(n_owning) if types[i] == FULL and f"blk.{i}.attn_k.weight" in gf.tensors]
    return bool(full) and all(f"blk.{i}.attn_v.weight" not in gf.tensors for i in full)


def _gemma4_text(gf: GGUFFile, notices: list[str], *, assistant: bool) -> dict[str, Any]:
    n = int(_need(gf, K.BLOCK_COUNT))
    pattern = _per_layer(gf, K.SLIDING_WINDOW_PATTERN, _need(gf, K.SLIDING_WINDOW_PATTERN), n)
    types = [SLIDING if p else FULL for p in pattern]
    heads = _per_layer(gf, K.HEAD_COUNT, _need(gf, K.HEAD_COUNT), n)
    if len(set(heads)) != 1:
        raise ModelFormatError(
            f"{gf.path}: {gf.arch}.{K.HEAD_COUNT} varies per layer ({heads}); not supported"
        )
    kv = _per_layer(gf, K.HEAD_COUNT_KV, _need(gf, K.HEAD_COUNT_KV), n)
    head_full = int(_need(gf, K.KEY_LENGTH))
    head_swa = int(gf.arch_value(K.KEY_LENGTH_SWA, head_full))
    for key, expect in ((K.VALUE_LENGTH, head_full), (K.VALUE_LENGTH_SWA, head_swa)):
        value = gf.arch_value(key, expect)
        if int(value) != expect:
            raise ModelFormatError(f"{gf.path}: {gf.arch}.{key} {value} differs from the key length {expect}")
    rope_dims_swa = gf.arch_value(K.ROPE_DIMS_SWA)
    if rope_dims_swa is not None and int(rope_dims_swa) != head_swa:
        raise ModelFormatError(
            f"{gf.path}: {gf.arch}.{K.ROPE_DIMS_SWA} {rope_dims_swa} < head dim {head_swa}: partial RoPE on "
            "sliding layers is not supported"
        )
    n_shared = n if assistant else int(gf.arch_value(K.SHARED_KV_LAYERS, 0))
    intermediate, double_wide = _feed_forward(gf, n, n_shared, assistant)
    kv_swa = _kind_value(gf, K.HEAD_COUNT_KV, kv, types, SLIDING)
    kv_full = _kind_value(gf, K.HEAD_COUNT_KV, kv, types, FULL)
    per_layer = {
        str(i): {"head_dim": head_full if t == FULL else head_swa, "num_key_value_heads": int(kv[i])}
        for i, t in enumerate(types)
    }
    rope = {
        SLIDING: {"rope_type": "default", "rope_theta": _arch_float(gf, K.ROPE_FREQ_BASE_SWA, 10_000.0)},
        FULL: {
            "rope_type": "proportional",
            "partial_rotary_factor": _partial_rotary_factor(gf, head_full, types, notices),
            "rope_theta": _arch_float(gf, K.ROPE_FREQ_BASE, 1_000_000.0),
            "factor": _rope_scaling(gf),
        },
    }
    ple = int(gf.arch_value(K.PLE_DIM, 0) or 0)
    experts = int(gf.arch_value(K.EXPERT_COUNT, 0) or 0)
    text: dict[str, Any] = {
        "model_type": "gemma4_text",
        "vocab_size": _rows(gf, "token_embd.weight"),
        "hidden_size": int(_need(gf, K.EMBEDDING_LENGTH)),
        "intermediate_size": intermediate,
        "use_double_wide_mlp": double_wide,
        "num_hidden_layers": n,
        "num_attention_heads": int(heads[0]),
        "num_key_value_heads": int(kv_swa if kv_swa is not None else kv_full),
        "head_dim": head_swa,
        "global_head_dim": head_full,
        "per_layer_config": per_layer,
        "layer_types": types,
        "sliding_window": int(_need(gf, K.SLIDING_WINDOW)),
        "rms_norm_eps": _arch_float(gf, K.RMS_EPS, 1e-6),
        "rope_parameters": rope,
        "final_logit_softcapping": _softcap(gf.arch_value(K.FINAL_SOFTCAP)),
        "max_position_embeddings": int(gf.arch_value(K.CONTEXT_LENGTH, 131072)),
        "num_kv_shared_layers": 0 if assistant else n_shared,
        "attention_k_eq_v": _k_eq_v(gf, types, n - n_shared),
        "hidden_size_per_layer_input": ple,
        "vocab_size_per_layer_input": _rows(gf, "per_layer_token_embd.weight") if ple else 0,
        "enable_moe_block": experts > 0,
        **_special_ids(gf),
    }
    if experts:
        text.update(
            num_experts=experts,
            top_k_experts=int(_need(gf, K.EXPERT_USED_COUNT)),
            moe_intermediate_size=int(_need(gf, K.EXPERT_FF_LENGTH)),
        )
    return text


def drafter_head(gf: GGUFFile, layout: Any) -> tuple[str, str | None]:
    """(`centroid` or `full`, a notice or None): which LM head this drafter file drafts with.
    A file whose keys say the checkpoint had a centroid head that the file lacks (our mainline
    default; llama.cpp's converter drops it and says nothing), and any mainline file without one,
    get a notice that drafting pays the full vocabulary head and how to put the centroids back."""
    centroids = DRAFTER_HEADS[layout.name]["masked_embedding.centroids.weight"]
    if centroids in gf.tensors:
        return "centroid", None
    vocab = _rows(gf, "token_embd.weight")
    fix = (
        f"gemma-mtp convert {gf.path.name} OUT.gguf --centroids-from HF_ASSISTANT_DIR puts the centroids back"
    )
    if gf.arch_value(layout.ordered_key):
        return "full", (
            f"{gf.path}: the drafter's checkpoint has a centroid head that this file lacks "
            f"(no {centroids}): each draft step computes all {vocab} vocabulary logits; {fix}"
        )
    if layout.name == "mainline":
        return "full", (
            f"{gf.path}: dense drafter head: each draft step computes all {vocab} vocabulary logits "
            f"(llama.cpp's converter drops the centroid head of the E2B/E4B assistants; if this is "
            f"one of those, {fix})"
        )
    return "full", None


def _drafter_head(gf: GGUFFile, layout: Any, notices: list[str]) -> dict[str, Any]:
    centroids = DRAFTER_HEADS[layout.name]["masked_embedding.centroids.weight"]
    has_centroids = centroids in gf.tensors
    flag = gf.arch_value(layout.ordered_key)
    if flag is not None and not flag and has_centroids:
        raise ModelFormatError(
            f"{gf.path}: {gf.arch}.{layout.ordered_key} is false but the file has {centroids}; "
            "the file is inconsistent"
        )
    _, notice = drafter_head(gf, layout)
    if notice:
        notices.append(notice)
    n_centroids = (
        _rows(gf, centroids) if has_centroids else int(gf.arch_value(layout.centroid_count_key, 2048))
    )
    top_k = gf.arch_value(layout.centroid_top_k_key)
    if top_k is None and has_centroids:
        notices.append(
            f"no {gf.arch}.{layout.centroid_top_k_key}: the centroid head keeps the top {DEFAULT_CENTROID_TOP_K} clusters"
        )
    backbone = backbone_width(gf, layout.name)
    if backbone is None:
        raise ModelFormatError(f"{gf.path}: missing metadata key {gf.arch}.{layout.backbone_key}")
    return {
        "backbone_hidden_size": backbone,
        "use_ordered_embeddings": has_centroids,
        "num_centroids": n_centroids,
        "centroid_intermediate_top_k": int(top_k if top_k is not None else DEFAULT_CENTROID_TOP_K),
    }


# ------------------------------------------------------------------------------------- Gemma 3


def _gemma3_text(gf: GGUFFile) -> dict[str, Any]:
    n = int(_need(gf, K.BLOCK_COUNT))
    hidden = int(_need(gf, K.EMBEDDING_LENGTH))
    heads = _per_layer(gf, K.HEAD_COUNT, _need(gf, K.HEAD_COUNT), n)
    kv = _per_layer(gf, K.HEAD_COUNT_KV, gf.arch_value(K.HEAD_COUNT_KV, heads[0]), n)
    if len(set(heads)) != 1 or len(set(kv)) != 1:
        raise ModelFormatError(f"{gf.path}: per-layer head counts are not supported for gemma3")
    head_dim = int(gf.arch_value(K.KEY_LENGTH, hidden // int(heads[0])))
    window = int(gf.arch_value(K.SLIDING_WINDOW, 0) or 0)
    pattern = gf.arch_value(K.SLIDING_WINDOW_PATTERN)
    if pattern is not None:
        types = [SLIDING if p else FULL for p in _per_layer(gf, K.SLIDING_WINDOW_PATTERN, pattern, n)]
    elif window > 0:
        types = [FULL if (i + 1) % GEMMA3_SWA_PERIOD == 0 else SLIDING for i in range(n)]
    else:
        types = [FULL] * n
    scale = gf.arch_value(K.ATTENTION_SCALE)
    if scale:
        scalar = _float(scale) ** -2
        scalar = float(round(scalar)) if abs(scalar - round(scalar)) < 1e-3 else scalar  # stored as f32
    else:
        scalar = hidden / int(heads[0]) if n == GEMMA3_27B_LAYERS else float(head_dim)
    factor = _rope_scaling(gf)
    return {
        "model_type": "gemma3_text",
        "vocab_size": _rows(gf, "token_embd.weight"),
        "hidden_size": hidden,
        "intermediate_size": int(_need(gf, K.FEED_FORWARD_LENGTH)),
        "num_hidden_layers": n,
        "num_attention_heads": int(heads[0]),
        "num_key_value_heads": int(kv[0]),
        "head_dim": head_dim,
        "query_pre_attn_scalar": scalar,
        "layer_types": types,
        "sliding_window": window or 512,
        "rms_norm_eps": _arch_float(gf, K.RMS_EPS, 1e-6),
        "rope_theta": _arch_float(gf, K.ROPE_FREQ_BASE, 1_000_000.0),
        "rope_local_base_freq": _arch_float(gf, K.ROPE_FREQ_BASE_SWA, GEMMA3_LOCAL_ROPE_BASE),
        "rope_scaling": {"rope_type": "linear", "factor": factor} if factor != 1.0 else None,
        "final_logit_softcapping": _softcap(gf.arch_value(K.FINAL_SOFTCAP)),
        "attn_logit_softcapping": _softcap(gf.arch_value(K.ATTN_SOFTCAP)),
        "max_position_embeddings": int(gf.arch_value(K.CONTEXT_LENGTH, 131072)),
        **_special_ids(gf),
    }
