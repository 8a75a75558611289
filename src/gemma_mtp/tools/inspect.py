"""What a GGUF holds (`gemma-mtp inspect`): plain data for the CLI to format (a JSON-ready dict)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType

from ..config import FULL, SLIDING, AssistantConfig, TextConfig
from ..errors import GemmaMTPError
from ..gguf.keys import LAYOUT_BY_ARCH, K
from ..gguf.metadata import config_from_gguf
from ..gguf.reader import GGUFFile, open_gguf, tensor_shape
from .paths import gguf_input
from .sanitize import find_leaks

__all__ = ["inspect_gguf", "hyperparameters", "head_description"]


def head_description(config: AssistantConfig) -> str:
    """Which LM head a drafter drafts with, in words (what inspect and pair show)."""
    vocab = config.vocab_size
    if config.use_ordered_embeddings:
        rows = config.centroid_top_k * (vocab // config.num_centroids)
        return (
            f"centroid head: {config.num_centroids} centroid logits, then the top {config.centroid_top_k} "
            f"clusters' {rows} tokens (of {vocab})"
        )
    return f"full head: all {vocab} vocabulary logits per draft step"


def _file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"unknown ({value})"


def _kind_values(text: TextConfig, attr: str) -> dict[str, int]:
    out = {}
    for kind in (SLIDING, FULL):
        values = {getattr(s, attr) for s in text.layers if s.kind == kind}
        if values:
            out[kind] = values.pop() if len(values) == 1 else sorted(values)
    return out


def hyperparameters(config: TextConfig | AssistantConfig) -> dict[str, Any]:
    text = config.text if isinstance(config, AssistantConfig) else config
    out: dict[str, Any] = {
        "family": text.family,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_layers": text.num_layers,
        "layers": {kind: sum(s.kind == kind for s in text.layers) for kind in (SLIDING, FULL)},
        "num_heads": text.num_heads,
        "kv_heads": _kind_values(text, "kv_heads"),
        "head_dim": _kind_values(text, "head_dim"),
        "sliding_window": text.sliding_window,
        "kv_shared_layers": sum(not s.owns_kv for s in text.layers) if not config.is_assistant else None,
        "max_position_embeddings": text.max_position_embeddings,
        "final_logit_softcapping": text.final_logit_softcapping,
    }
    if text.num_experts:
        out.update(num_experts=text.num_experts, top_k_experts=text.top_k_experts)
    if text.ple_dim:
        out["per_layer_input_dim"] = text.ple_dim
    if isinstance(config, AssistantConfig):
        out.update(
            backbone_hidden_size=config.backbone_hidden_size,
            head=head_description(config),
            use_ordered_embeddings=config.use_ordered_embeddings,
        )
        if config.use_ordered_embeddings:  # a dense head has no cluster sizes to show
            out.update(num_centroids=config.num_centroids, centroid_top_k=config.centroid_top_k)
    return {k: v for k, v in out.items() if v is not None}


def _tensor_summary(gf: GGUFFile) -> dict[str, Any]:
    by_type: dict[str, dict[str, int]] = {}
    rows = []
    for t in gf.tensors.values():
        n = int(np.prod(t.shape, dtype=np.int64))
        entry = by_type.setdefault(t.tensor_type.name, {"count": 0, "parameters": 0, "bytes": 0})
        entry["count"] += 1
        entry["parameters"] += n
        entry["bytes"] += t.n_bytes
        rows.append(
            {"name": t.name, "type": t.tensor_type.name, "shape": list(tensor_shape(t)), "bytes": t.n_bytes}
        )
    params = sum(e["parameters"] for e in by_type.values())
    size = sum(e["bytes"] for e in by_type.values())
    return {
        "count": len(rows),
        "parameters": params,
        "bytes": size,
        "bits_per_weight": round(size * 8 / params, 3) if params else None,
        "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])),
        "list": rows,
    }


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Everything `gemma-mtp inspect` shows, as one JSON-ready dict."""
    gf = open_gguf(gguf_input(path, "inspect"))
    layout = LAYOUT_BY_ARCH[gf.arch].name if gf.arch in LAYOUT_BY_ARCH else None
    info: dict[str, Any] = {
        "file": str(gf.path),
        "size_bytes": gf.path.stat().st_size,
        "architecture": gf.arch,
        "kind": "drafter" if layout else "target",
        "layout": layout,
        "file_type": _file_type_name(gf.value(K.FILE_TYPE)),
        "quantization_version": gf.value(K.QUANTIZATION_VERSION),
        "metadata_keys": len(gf.fields),
        "tokenizer": _tokenizer(gf),
    }
    try:
        config, _, notices = config_from_gguf(gf)
        info["hyperparameters"], info["notices"] = hyperparameters(config), notices
    except GemmaMTPError as exc:
        info["kind"] = "unsupported"
        info["hyperparameters"], info["notices"] = None, [str(exc)]
    info["tensors"] = _tensor_summary(gf)
    info["leaks"] = [asdict(leak) for leak in find_leaks(gf)]
    return info


def _tokenizer(gf: GGUFFile) -> dict[str, Any] | None:
    tokens = gf.value(K.TOKENS)
    if tokens is None:
        return None
    return {
        "model": gf.value("tokenizer.ggml.model"),
        "tokens": len(tokens),
        "chat_template": gf.value("tokenizer.chat_template") is not None,
    }
