"""GGUF metadata keys and the three drafter layouts (data).

Keys are written without the architecture prefix; `{arch}.` is prepended when reading or writing
(gguf-py's `Keys.LLM`, `Keys.Attention`, `Keys.Rope`). pip `gguf` 0.19.0 does not know
`gemma4-assistant`, so the drafter keys are raw strings here, checked against llama.cpp's
`Gemma4AssistantModel` converter, legacy early conversions and ik_llama.cpp's `gemma4_mtp` loader.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "K",
    "TARGET_ARCHS",
    "DrafterLayout",
    "DRAFTER_LAYOUTS",
    "LAYOUT_BY_ARCH",
    "EOG_TOKEN_TEXTS",
    "EOG_ID_KEYS",
    "LAYOUT_ONLY_KEYS",
]


class K:
    """Architecture-relative keys (`{arch}.` + value)."""

    CONTEXT_LENGTH = "context_length"
    EMBEDDING_LENGTH = "embedding_length"
    BLOCK_COUNT = "block_count"
    FEED_FORWARD_LENGTH = "feed_forward_length"
    HEAD_COUNT = "attention.head_count"
    HEAD_COUNT_KV = "attention.head_count_kv"
    KEY_LENGTH = "attention.key_length"  # full-attention head dim for Gemma 4
    VALUE_LENGTH = "attention.value_length"
    KEY_LENGTH_SWA = "attention.key_length_swa"
    VALUE_LENGTH_SWA = "attention.value_length_swa"
    RMS_EPS = "attention.layer_norm_rms_epsilon"
    SLIDING_WINDOW = "attention.sliding_window"
    SLIDING_WINDOW_PATTERN = "attention.sliding_window_pattern"  # bool per layer, True = sliding
    SHARED_KV_LAYERS = "attention.shared_kv_layers"
    ATTENTION_SCALE = "attention.scale"  # q.k multiplier; llama.cpp derives it for Gemma 3
    ATTN_SOFTCAP = "attn_logit_softcapping"
    FINAL_SOFTCAP = "final_logit_softcapping"
    ROPE_FREQ_BASE = "rope.freq_base"
    ROPE_FREQ_BASE_SWA = "rope.freq_base_swa"
    ROPE_DIMS = "rope.dimension_count"
    ROPE_DIMS_SWA = "rope.dimension_count_swa"
    ROPE_SCALING_TYPE = "rope.scaling.type"
    ROPE_SCALING_FACTOR = "rope.scaling.factor"
    PLE_DIM = "embedding_length_per_layer_input"
    EXPERT_COUNT = "expert_count"
    EXPERT_USED_COUNT = "expert_used_count"
    EXPERT_FF_LENGTH = "expert_feed_forward_length"
    # legacy drafters carry it; we never write it (a drafter owns no K/V projection, so it means
    # nothing there). Targets: a full layer with attn_k and no attn_v says it.
    K_EQ_V = "attention.k_eq_v"

    # absolute keys
    ARCHITECTURE = "general.architecture"
    FILE_TYPE = "general.file_type"
    QUANTIZATION_VERSION = "general.quantization_version"
    TOKENS = "tokenizer.ggml.tokens"
    BOS_ID = "tokenizer.ggml.bos_token_id"
    EOS_ID = "tokenizer.ggml.eos_token_id"
    EOT_ID = "tokenizer.ggml.eot_token_id"
    EOM_ID = "tokenizer.ggml.eom_token_id"
    PAD_ID = "tokenizer.ggml.padding_token_id"


# `general.architecture` of the targets we load -> our config family.
TARGET_ARCHS = {"gemma4": "gemma4", "gemma3": "gemma3"}


@dataclass(frozen=True, kw_only=True)
class DrafterLayout:
    name: str
    arch: str  # general.architecture
    backbone_key: str  # the target's hidden width
    centroid_count_key: str  # the centroid tensor's rows win when it is present
    centroid_top_k_key: str
    ordered_key: str  # absent: the presence of the centroid tensors says it
    head_keys_when_dense: bool  # a dense drafter still states its head (ordered = false)
    nextn_key: bool  # writes nextn_predict_layers (= block count)
    requires_target_arch: str | None  # legacy: "gemma4"
    rope_freqs: bool  # carries rope_freqs.weight (the engine that reads it needs it)


DEFAULT_LAYOUT = "mainline"  # what convert writes unless --layout says otherwise
DRAFTER_LAYOUTS = {
    "mainline": DrafterLayout(
        name="mainline",
        arch="gemma4-assistant",
        backbone_key="embedding_length_out",
        # mainline has no centroid keys (llama.cpp's converter drops the centroid head, and its
        # loader refuses a file with the centroid tensors). On centroid drafters only we write ik's
        # spellings, so the file says it had the head (llama.cpp ignores unknown keys); dense
        # drafters get no head keys at all, as llama.cpp's converter writes them.
        centroid_count_key="centroid_count",
        centroid_top_k_key="centroid_top_k",
        ordered_key="use_ordered_embeddings",
        head_keys_when_dense=False,
        nextn_key=True,
        requires_target_arch=None,
        rope_freqs=True,
    ),
    "legacy": DrafterLayout(
        name="legacy",
        arch="gemma4_assistant",
        backbone_key="n_embd_backbone",
        centroid_count_key="n_centroids",
        centroid_top_k_key="centroid_top_k",
        ordered_key="use_ordered_embeddings",
        head_keys_when_dense=True,
        nextn_key=False,
        requires_target_arch="gemma4",
        rope_freqs=True,
    ),
    "ik": DrafterLayout(
        name="ik",
        arch="gemma4_mtp",
        backbone_key="backbone_embedding_length",
        centroid_count_key="centroid_count",
        centroid_top_k_key="centroid_top_k",
        ordered_key="use_ordered_embeddings",
        head_keys_when_dense=True,
        nextn_key=False,
        requires_target_arch=None,
        rope_freqs=False,
    ),
}
LAYOUT_BY_ARCH = {layout.arch: layout for layout in DRAFTER_LAYOUTS.values()}

# Architecture-relative keys that belong to one drafter layout only (not copied across layouts).
LAYOUT_ONLY_KEYS = frozenset(
    {"nextn_predict_layers", "requires_target_arch", K.K_EQ_V}
    | {layout.backbone_key for layout in DRAFTER_LAYOUTS.values()}
    | {layout.centroid_count_key for layout in DRAFTER_LAYOUTS.values()}
    | {layout.ordered_key for layout in DRAFTER_LAYOUTS.values()}
    | {layout.centroid_top_k_key for layout in DRAFTER_LAYOUTS.values()}
)

# End of generation, the one definition (the tokenizers' stop ids and the configs' eos ids use it).
# Token texts: the Gemma 4 GGUFs carry only `eos_token_id`, and llama.cpp (llama-vocab.cpp,
# `special_eog_ids`) finds `<turn|>` and `<|tool_response>` by their text; this is the subset of its
# list that Gemma models use (`<end_of_turn>`: Gemma 3). Keys: the ids a vocabulary names.
EOG_TOKEN_TEXTS = ("<eos>", "<end_of_turn>", "<turn|>", "<|tool_response>")
EOG_ID_KEYS = (K.EOS_ID, K.EOT_ID, K.EOM_ID)

# Defaults where a layout has no key (the released E2B/E4B assistants' values).
DEFAULT_CENTROID_TOP_K = 32
# Proportional RoPE on Gemma 4 full layers when a file carries no rope_freqs tensor (HF default).
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.25
