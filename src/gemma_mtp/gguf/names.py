"""Tensor names: our module paths <-> GGUF names, one table per layout (data, not code).

Our module paths mirror the Hugging Face checkpoints (see `weights/hf.py`), so these tables are
also the HF <-> GGUF tables once the checkpoint prefix is stripped. Every GGUF name below was
checked against gguf-py 0.19.0 (`MODEL_TENSORS[GEMMA3 | GEMMA4]`, `get_tensor_name_map`), llama.cpp's
converter (`Gemma3Model` / `Gemma4Model` / `Gemma4AssistantModel`) and loaders (`src/models/gemma4*.cpp`)
and ik_llama.cpp's `gemma4_mtp` tensor list.

Transforms between the two sides (applied by the loader and the writer, listed here as data):
- Gemma 3 RMS norms: llama.cpp stores `1 + w` (`Gemma3Model.norm_shift`); our modules hold `w`.
  Gemma 4 norms are plain scales: stored as is (`Gemma4Model.norm_shift` returns 0).
- Embeddings are stored unscaled on both sides (the sqrt(width) scale is applied at run time).
- MoE experts keep the checkpoint layout: `[E, 2*I, D]` / `[E, D, I]` in numpy order, which is
  ggml's `{D, 2*I, E}` / `{I, D, E}`.
- `rope_freqs.weight` has no module: it encodes the proportional RoPE of full-attention layers
  (1.0 for rotated pairs, 1e30 for the rest); written from the config, read into the config.
- The assistant's `token_ordering` is an int64 buffer here and an I32 tensor in every layout.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..config import AssistantConfig, TextConfig

__all__ = [
    "BODY_GLOBAL",
    "BODY_LAYER",
    "DRAFTER_HEADS",
    "ROPE_FREQS",
    "NORM_OFFSET",
    "SHARED_LAYER_KV",
    "name_map",
    "norm_offset",
]

# Tensors of a text body outside the layers (ours -> GGUF).
BODY_GLOBAL = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    # per-layer embeddings (E2B/E4B)
    "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
}

# Tensors of layer N: `layers.N.<ours>` <-> `blk.N.<gguf>`.
BODY_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "layer_scalar": "layer_output_scale.weight",
    # per-layer embeddings
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
    # mixture of experts (26B-A4B); llama.cpp renames the two router scales
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
}

# Drafter heads per layout (ours -> GGUF). Mainline's ordering tensor has no `.weight` suffix.
DRAFTER_HEADS = {
    "mainline": {
        "pre_projection.weight": "nextn.pre_projection.weight",
        "post_projection.weight": "nextn.post_projection.weight",
        "masked_embedding.centroids.weight": "masked_embd_centroids.weight",
        "masked_embedding.token_ordering": "masked_embd_ordering",
    },
    "legacy": {
        "pre_projection.weight": "mtp.pre_projection.weight",
        "post_projection.weight": "mtp.post_projection.weight",
        "masked_embedding.centroids.weight": "mtp.centroids.weight",
        "masked_embedding.token_ordering": "mtp.token_ordering.weight",
    },
    "ik": {
        "pre_projection.weight": "mtp_pre_proj.weight",
        "post_projection.weight": "mtp_post_proj.weight",
        "masked_embedding.centroids.weight": "mtp_centroids.weight",
        "masked_embedding.token_ordering": "mtp_token_ordering.weight",
    },
}

# The assistant body lives under `model.` in our module tree (as in the checkpoints).
ASSISTANT_BODY_PREFIX = "model."

# Derived tensor: full-attention proportional RoPE as ggml frequency factors.
ROPE_FREQS = "rope_freqs.weight"
ROPE_FREQS_ROTATED = 1.0
ROPE_FREQS_UNROTATED = 1e30

# Stored norm weight = ours + offset, per family (llama.cpp's `norm_shift`), for names ending in:
NORM_OFFSET = {"gemma3": 1.0, "gemma4": 0.0, "gemma4_unified": 0.0}
NORM_SUFFIX = "norm.weight"

# KV-shared consumer layers own no K/V; a file may still carry them (llama.cpp ignores them too).
SHARED_LAYER_KV = ("attn_k.weight", "attn_v.weight", "attn_k_norm.weight")


def _body_pairs(n_layers: int, prefix: str) -> Iterator[tuple[str, str]]:
    for ours, theirs in BODY_GLOBAL.items():
        yield prefix + ours, theirs
    for i in range(n_layers):
        for ours, theirs in BODY_LAYER.items():
            yield f"{prefix}layers.{i}.{ours}", f"blk.{i}.{theirs}"


def name_map(config: TextConfig | AssistantConfig, layout: str | None = None) -> dict[str, str]:
    """Every possible tensor of this model: our state_dict name -> GGUF name.

    Targets need no layout; assistants need one of `DRAFTER_HEADS`.
    """
    if isinstance(config, AssistantConfig):
        if layout not in DRAFTER_HEADS:
            raise ValueError(f"drafter layout {layout!r}; use one of {', '.join(DRAFTER_HEADS)}")
        pairs = dict(_body_pairs(config.text.num_layers, ASSISTANT_BODY_PREFIX))
        pairs.update(DRAFTER_HEADS[layout])
        return pairs
    return dict(_body_pairs(config.num_layers, ""))


def norm_offset(family: str, ours: str) -> float:
    """What llama.cpp adds to this tensor when storing it (1.0 for Gemma 3 norms, else 0.0)."""
    return NORM_OFFSET[family] if ours.endswith(NORM_SUFFIX) else 0.0
