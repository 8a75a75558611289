"""Model configuration: one frozen dataclass per model kind, built from a HF config.json.

Per-layer facts (attention kind, head dim, kv heads, which layer's KV a layer reads) are computed
once here so that no `forward` re-derives them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFormatError

__all__ = [
    "FULL",
    "SLIDING",
    "LayerSpec",
    "RopeSpec",
    "TextConfig",
    "AssistantConfig",
    "load_config",
    "config_from_dict",
]

FULL = "full_attention"
SLIDING = "sliding_attention"

# model_type -> (family, is_assistant). Text configs nested under "text_config" use the same table.
_MODEL_TYPES = {
    "gemma4": ("gemma4", False),
    "gemma4_text": ("gemma4", False),
    "gemma4_unified": ("gemma4_unified", False),
    "gemma4_unified_text": ("gemma4_unified", False),
    "gemma3": ("gemma3", False),
    "gemma3_text": ("gemma3", False),
    "gemma4_assistant": ("gemma4", True),
    "gemma4_unified_assistant": ("gemma4_unified", True),
}


@dataclass(frozen=True, kw_only=True)
class RopeSpec:
    kind: str  # "default" | "proportional" | "linear"
    theta: float
    partial_rotary_factor: float = 1.0
    factor: float = 1.0


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    index: int
    kind: str  # FULL or SLIDING
    head_dim: int
    kv_heads: int
    owns_kv: bool  # False for KV-shared consumers: no k/v weights, no cache
    kv_source: int  # index of the layer whose KV this layer attends to (itself when owns_kv)
    k_eq_v: bool  # value projection is the key projection (31B full layers)
    double_wide_mlp: bool


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    family: str  # "gemma4" | "gemma4_unified" | "gemma3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    rms_norm_eps: float
    sliding_window: int
    layers: tuple[LayerSpec, ...]
    rope: dict[str, RopeSpec]
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    attention_scale: float = 1.0
    hidden_activation: str = "gelu_pytorch_tanh"
    # per-layer embeddings (E2B/E4B)
    ple_dim: int = 0
    ple_vocab_size: int = 0
    # mixture of experts beside the dense MLP (26B-A4B)
    num_experts: int = 0
    top_k_experts: int = 0
    moe_intermediate_size: int = 0
    max_position_embeddings: int = 131072
    eos_token_ids: tuple[int, ...] = (1,)
    bos_token_id: int | None = 2
    pad_token_id: int | None = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_assistant(self) -> bool:
        return False

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        return tuple(sorted({spec.kind for spec in self.layers}))

    def last_kv_owner(self, kind: str) -> int | None:
        """The last layer of `kind` that owns KV: what an assistant (or a shared layer) reads."""
        owners = [s.index for s in self.layers if s.kind == kind and s.owns_kv]
        return owners[-1] if owners else None


@dataclass(frozen=True, kw_only=True)
class AssistantConfig:
    text: TextConfig  # the assistant body; every layer is a query-only consumer of target KV
    backbone_hidden_size: int
    use_ordered_embeddings: bool
    num_centroids: int
    centroid_top_k: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_assistant(self) -> bool:
        return True

    @property
    def family(self) -> str:
        return self.text.family

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size


def load_config(path: str | Path) -> TextConfig | AssistantConfig:
    """Read `config.json` from a HF model directory (or the file itself)."""
    path = Path(path)
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise ModelFormatError(
            f"{cfg_path}: no config.json found; pass a Hugging Face model directory or a .gguf file"
        )
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{cfg_path}: cannot read config.json ({exc})") from None
    return config_from_dict(data, source=str(cfg_path))


def config_from_dict(data: dict[str, Any], *, source: str = "config.json") -> TextConfig | AssistantConfig:
    model_type = data.get("model_type")
    if model_type not in _MODEL_TYPES:
        known = ", ".join(sorted(_MODEL_TYPES))
        raise ModelFormatError(f"{source}: unsupported model_type {model_type!r}; supported: {known}")
    family, is_assistant = _MODEL_TYPES[model_type]
    text = data.get("text_config") if "text_config" in data else data
    if text is None:
        raise ModelFormatError(f"{source}: model_type {model_type!r} needs a text_config")
    if is_assistant:
        body = _text_config(text, family=family, source=source, all_shared=True, defaults=data)
        ordered = bool(data.get("use_ordered_embeddings", False))
        # a dense head has no clusters: its (unused) sizes are the defaults, whatever a file says
        head = data if ordered else {}
        return AssistantConfig(
            text=body,
            backbone_hidden_size=int(data.get("backbone_hidden_size", 1536)),
            use_ordered_embeddings=ordered,
            num_centroids=int(head.get("num_centroids", 2048)),
            centroid_top_k=int(head.get("centroid_intermediate_top_k", 32)),
            raw=data,
        )
    return _text_config(text, family=family, source=source, all_shared=False, defaults=data)


def _layer_types(text: dict[str, Any], n_layers: int, family: str) -> list[str]:
    types = text.get("layer_types")
    if types is None:
        pattern = int(text.get("sliding_window_pattern", 6))
        types = [SLIDING if (i + 1) % pattern else FULL for i in range(n_layers)]
    types = list(types)
    if family != "gemma3" and types and types[-1] != FULL:
        types[-1] = FULL  # transformers forces the last Gemma 4 layer to full attention
    return types


def _rope(text: dict[str, Any], family: str) -> dict[str, RopeSpec]:
    params = text.get("rope_parameters") or {}
    if family == "gemma3":
        defaults = {
            SLIDING: {"rope_type": "default", "rope_theta": text.get("rope_local_base_freq", 10_000.0)},
            FULL: {"rope_type": "default", "rope_theta": text.get("rope_theta", 1_000_000.0)},
        }
        scaling = text.get("rope_scaling")
        if scaling and not params:
            defaults[FULL] = {**defaults[FULL], **scaling}
    else:
        defaults = {
            SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
        }
    out = {}
    for kind in (SLIDING, FULL):
        p = {**defaults[kind], **(params.get(kind) or {})}
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type not in ("default", "proportional", "linear"):
            raise ModelFormatError(f"rope_type {rope_type!r} for {kind} layers is not supported")
        out[kind] = RopeSpec(
            kind=rope_type,
            theta=float(p["rope_theta"]),
            partial_rotary_factor=float(p.get("partial_rotary_factor", 1.0)),
            factor=float(p.get("factor", 1.0)),
        )
    return out


def _text_config(
    text: dict[str, Any], *, family: str, source: str, all_shared: bool, defaults: dict[str, Any]
) -> TextConfig:
    def need(key: str) -> Any:
        if key not in text:
            raise ModelFormatError(f"{source}: missing required key {key!r}")
        return text[key]

    n_layers = int(need("num_hidden_layers"))
    hidden = int(need("hidden_size"))
    n_heads = int(need("num_attention_heads"))
    kv_heads = int(text.get("num_key_value_heads", n_heads))
    head_dim = int(text.get("head_dim") or hidden // n_heads)
    types = _layer_types(text, n_layers, family)
    if len(types) != n_layers:
        raise ModelFormatError(f"{source}: layer_types has {len(types)} entries for {n_layers} layers")

    gemma4 = family != "gemma3"
    k_eq_v = bool(text.get("attention_k_eq_v", False)) and gemma4
    per_layer = {int(k): v for k, v in (text.get("per_layer_config") or {}).items()}
    # transformers >= 5.23 writes `per_layer_config` (empty when full layers use head_dim too);
    # released checkpoints carry the full-attention overrides as flat keys instead
    if gemma4 and "per_layer_config" not in text:
        # Older config.json files carry the full-attention overrides as flat keys.
        override: dict[str, Any] = {"head_dim": int(text.get("global_head_dim", 512))}
        if k_eq_v and text.get("num_global_key_value_heads") is not None:
            override["num_key_value_heads"] = int(text["num_global_key_value_heads"])
        per_layer = {i: override for i, t in enumerate(types) if t == FULL}

    n_shared = n_layers if all_shared else int(text.get("num_kv_shared_layers") or 0)
    first_shared = n_layers - n_shared
    double_wide = bool(text.get("use_double_wide_mlp", False))
    layers = []
    for i, kind in enumerate(types):
        owns = i < first_shared
        if owns:
            source_idx = i
        elif all_shared:
            source_idx = -1  # an assistant reads the *target's* KV, resolved at pairing time
        else:
            owners = [j for j in range(first_shared) if types[j] == kind]
            if not owners:
                raise ModelFormatError(f"{source}: KV-shared layer {i} ({kind}) has no earlier {kind} layer")
            source_idx = owners[-1]
        over = per_layer.get(i, {})
        layers.append(
            LayerSpec(
                index=i,
                kind=kind,
                head_dim=int(over.get("head_dim", head_dim)),
                kv_heads=int(over.get("num_key_value_heads", kv_heads)),
                owns_kv=owns,
                kv_source=source_idx,
                # an assistant owns no K/V projection: sharing one means nothing there
                k_eq_v=k_eq_v and kind == FULL and not all_shared,
                double_wide_mlp=double_wide and not owns,
            )
        )

    eos = text.get("eos_token_id", defaults.get("eos_token_id", 1))
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    moe = bool(text.get("enable_moe_block", False))
    return TextConfig(
        family=family,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=n_layers,
        num_heads=n_heads,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        sliding_window=int(text.get("sliding_window") or 512),
        layers=tuple(layers),
        rope=_rope(text, family),
        final_logit_softcapping=text.get("final_logit_softcapping"),
        attn_logit_softcapping=text.get("attn_logit_softcapping") if not gemma4 else None,
        attention_scale=1.0 if gemma4 else float(text.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        hidden_activation=text.get("hidden_activation") or text.get("hidden_act") or "gelu_pytorch_tanh",
        ple_dim=int(text.get("hidden_size_per_layer_input") or 0) if family == "gemma4" else 0,
        ple_vocab_size=int(text.get("vocab_size_per_layer_input") or 0) if family == "gemma4" else 0,
        num_experts=int(text.get("num_experts") or 0) if moe else 0,
        top_k_experts=int(text.get("top_k_experts") or 0) if moe else 0,
        moe_intermediate_size=int(text.get("moe_intermediate_size") or 0) if moe else 0,
        max_position_embeddings=int(text.get("max_position_embeddings", 131072)),
        eos_token_ids=tuple(int(e) for e in eos_ids),
        bos_token_id=text.get("bos_token_id", 2),
        pad_token_id=text.get("pad_token_id", 0),
        raw=text,
    )
