"""The released Gemma 4 shapes (E2B, E4B, 26B-A4B, 31B) and their MTP assistants, as data.

Each shape is the `text_config` of the released `config.json` (and of its `-assistant`), so the
one code path that builds configs from checkpoints (`config.config_from_dict`) builds these too,
and our GGUF writer (`gguf.writer.metadata_entries`) turns them into llama.cpp's metadata.

Where the values come from (every field was read in at least two of these, and they agree):
- [hf] the released `config.json` files (google/gemma-4-{E2B,E4B,26B-A4B,31B}-it and
  `...-it-assistant`), as reproduced in public code that parses them (the mlx / Rust / Go / Swift
  ports' config tests, vLLM- and lightllm-style KV-layout tests), read through the `search` corpus.
- [gguf] `ggml-vocab-gemma-4.gguf` in llama.cpp's models/ (llama-cpp-python 0.3.36 sdist): made by
  llama.cpp's converter from the released 26B-A4B, so its `gemma4.*` keys are that model's
  (30 blocks, width 2816, FF 2112, 16 heads, KV heads 8 per sliding / 2 per full layer, key length
  512 / 256 swa, window 1024, 128 experts, 8 used, expert FF 704, context 262,144, no shared KV,
  no PLE, final softcap 30). tests/test_shaped_gguf.py compares against it when it is cached.
- [llama] llama.cpp `src/models/gemma4.cpp` `load_arch_hparams`: 30 layers = 26B-A4B, 35 = E2B,
  42 = E4B, 60 = 31B (its size detection); KV-shared layers are the last `shared_kv_layers`;
  `convert_hf_to_gguf.py` / `conversion/gemma.py` (`Gemma4Model`, `Gemma4AssistantModel`) for the
  keys, `per_layer_token_embd` = [vocab, layers * 256], full layers' `global_head_dim`.
- [tf] transformers 5.23 `Gemma4TextConfig` / `Gemma4AssistantConfig` (vocabulary 262,144, PLE
  width 256, assistant defaults: backbone 1536, 2048 centroids, top 32).
- [card] model cards: assistants of about 78M (E2B/E4B), 0.4B (26B-A4B) and 0.47B (31B)
  parameters, which these shapes reproduce (tests/test_shaped_gguf.py counts them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..config import FULL, SLIDING, AssistantConfig, TextConfig, config_from_dict
from ..errors import UsageError

__all__ = ["SHAPES", "Shape", "shape_configs", "VOCAB", "reduced_layer_types"]

S, F = SLIDING, FULL
VOCAB = 262_144  # [tf] [hf] every size
ROPE = {  # [hf] every size and every assistant
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
}
_COMMON = {
    "model_type": "gemma4_text",
    "vocab_size": VOCAB,
    "head_dim": 256,  # [hf] sliding layers; [gguf] key_length_swa 256
    "global_head_dim": 512,  # [hf] full layers; [gguf] key_length 512
    "rms_norm_eps": 1e-6,
    "rope_parameters": ROPE,
    "hidden_activation": "gelu_pytorch_tanh",
    "bos_token_id": 2,
    "eos_token_id": 1,  # text_config's; the chat stop ids come with the vocabulary (FACTS.md)
    "pad_token_id": 0,
}


def _text(period: int, n_layers: int, **fields: Any) -> dict[str, Any]:
    """A target text_config: `period - 1` sliding layers then one full layer, repeated [hf]."""
    types = ([S] * (period - 1) + [F]) * (n_layers // period)
    return {**_COMMON, "num_hidden_layers": n_layers, "layer_types": types, **fields}


def _assistant(backbone: int, ordered: bool, **text: Any) -> dict[str, Any]:
    """An assistant config: 4 query-only layers `[S, S, S, F]` over the target's KV [hf]."""
    body = {
        **_COMMON,
        "num_hidden_layers": 4,
        "layer_types": [S, S, S, F],
        "num_kv_shared_layers": 4,
        "final_logit_softcapping": None,
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": 0,
        "enable_moe_block": False,
        "use_double_wide_mlp": False,
        **text,
    }
    return {
        "model_type": "gemma4_assistant",
        "backbone_hidden_size": backbone,  # = the target's hidden_size
        "use_ordered_embeddings": ordered,  # the centroid head: E2B/E4B only
        "num_centroids": 2048,
        "centroid_intermediate_top_k": 32,
        "tie_word_embeddings": True,
        "text_config": body,
    }


@dataclass(frozen=True)
class Shape:
    name: str
    period: int  # layer_types repeat: period - 1 sliding layers, then a full one
    target: dict[str, Any]  # text_config
    assistant: dict[str, Any]  # the assistant's config.json


SHAPES = {
    "e2b": Shape(
        "e2b",
        5,
        _text(
            5,
            35,  # [llama] 35 layers = E2B
            hidden_size=1536,
            intermediate_size=6144,
            use_double_wide_mlp=True,  # [hf] the 20 KV-shared layers have 2 * 6144
            num_attention_heads=8,
            num_key_value_heads=1,
            sliding_window=512,
            num_kv_shared_layers=20,
            hidden_size_per_layer_input=256,
            vocab_size_per_layer_input=VOCAB,
            attention_k_eq_v=False,
            enable_moe_block=False,
            final_logit_softcapping=30.0,
            max_position_embeddings=131_072,
        ),
        _assistant(
            1536,
            True,
            hidden_size=256,
            intermediate_size=2048,
            num_attention_heads=4,
            num_key_value_heads=1,
            sliding_window=512,
            max_position_embeddings=131_072,
        ),
    ),
    "e4b": Shape(
        "e4b",
        6,
        _text(
            6,
            42,  # [llama] 42 layers = E4B
            hidden_size=2560,
            intermediate_size=10240,
            use_double_wide_mlp=False,
            num_attention_heads=8,
            num_key_value_heads=2,
            sliding_window=512,
            num_kv_shared_layers=18,
            hidden_size_per_layer_input=256,
            vocab_size_per_layer_input=VOCAB,
            attention_k_eq_v=False,
            enable_moe_block=False,
            final_logit_softcapping=30.0,
            max_position_embeddings=131_072,
        ),
        _assistant(
            2560,
            True,
            hidden_size=256,
            intermediate_size=2048,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=512,
            max_position_embeddings=131_072,
        ),
    ),
    "26b-a4b": Shape(
        "26b-a4b",
        6,
        _text(
            6,
            30,  # [llama] 30 layers = 26B-A4B; [gguf] block_count 30
            hidden_size=2816,
            intermediate_size=2112,  # the dense MLP beside the experts
            num_attention_heads=16,
            num_key_value_heads=8,
            num_global_key_value_heads=2,  # [gguf] head_count_kv 8 / 2
            attention_k_eq_v=True,  # full layers: V is K
            sliding_window=1024,
            num_kv_shared_layers=0,
            hidden_size_per_layer_input=0,
            use_double_wide_mlp=False,
            enable_moe_block=True,
            num_experts=128,
            top_k_experts=8,
            moe_intermediate_size=704,
            final_logit_softcapping=30.0,
            max_position_embeddings=262_144,
        ),
        _assistant(
            2816,
            False,
            hidden_size=1024,
            intermediate_size=8192,
            num_attention_heads=16,
            num_key_value_heads=8,
            num_global_key_value_heads=2,
            attention_k_eq_v=True,
            sliding_window=1024,
            max_position_embeddings=262_144,
        ),
    ),
    "31b": Shape(
        "31b",
        6,
        _text(
            6,
            60,  # [llama] 60 layers = 31B
            hidden_size=5376,
            intermediate_size=21504,
            num_attention_heads=32,
            num_key_value_heads=16,
            num_global_key_value_heads=4,
            attention_k_eq_v=True,
            sliding_window=1024,
            num_kv_shared_layers=0,
            hidden_size_per_layer_input=0,
            use_double_wide_mlp=False,
            enable_moe_block=False,
            final_logit_softcapping=30.0,
            max_position_embeddings=262_144,
        ),
        _assistant(
            5376,
            False,
            hidden_size=1024,
            intermediate_size=8192,
            num_attention_heads=32,
            num_key_value_heads=16,
            num_global_key_value_heads=4,
            attention_k_eq_v=True,
            sliding_window=1024,
            max_position_embeddings=262_144,
        ),
    ),
}


def reduced_layer_types(shape: Shape, n_layers: int) -> tuple[list[str], int]:
    """(layer_types, KV-shared layer count) of a `n_layers`-deep version of `shape`, for tests.

    The released pattern cut to `n_layers`, the last layer full (as transformers makes it); at
    least 2 layers so that both kinds are there (an assistant reads the last of each). A shape with
    KV sharing takes whole periods and keeps about its released share of shared layers, its last
    owning layers "sliding then full" (what llama.cpp's loader assumes, FACTS.md)."""
    real_shared = int(shape.target.get("num_kv_shared_layers") or 0)
    pattern = ([S] * (shape.period - 1) + [F]) * (n_layers // shape.period + 1)
    types = pattern[:n_layers]
    if n_layers < 2:
        raise UsageError(f"--layers {n_layers}: use at least 2 (a sliding and a full layer)")
    types[-1] = F
    if not real_shared:
        return types, 0
    periods = n_layers // shape.period
    if n_layers % shape.period or periods < 2:
        raise UsageError(
            f"--layers {n_layers}: {shape.name} shares KV; use a multiple of {shape.period} layers, "
            f"at least {2 * shape.period}"
        )
    n_real = shape.target["num_hidden_layers"]
    owned = min(periods - 1, max(1, round(periods * (n_real - real_shared) / n_real)))
    return types, (periods - owned) * shape.period


def _reduced_assistant_head(assistant: dict[str, Any], vocab: int) -> None:
    """Centroid clusters for a reduced vocabulary: 128 tokens each as released, at least top_k."""
    top_k = assistant["centroid_intermediate_top_k"]
    n = max(2 * top_k, vocab // 128)
    if vocab % n:
        raise UsageError(f"--vocab {vocab}: use a multiple of {n} (the centroid head's clusters)")
    assistant["num_centroids"] = n


def shape_configs(
    name: str, *, layers: int | None = None, vocab: int | None = None, experts: int | None = None
) -> tuple[TextConfig, AssistantConfig, dict[str, Any]]:
    """(target config, assistant config, the target's config.json dict) of a released shape;
    `layers` / `vocab` / `experts` make a smaller version of it (tests only)."""
    if name not in SHAPES:
        raise UsageError(f"--shape {name!r} is not one of {', '.join(SHAPES)}")
    shape = SHAPES[name]
    target, assistant = copy.deepcopy(shape.target), copy.deepcopy(shape.assistant)
    if layers is not None:
        types, shared = reduced_layer_types(shape, layers)
        target.update(num_hidden_layers=layers, layer_types=types, num_kv_shared_layers=shared)
    if experts is not None:
        if not target.get("enable_moe_block"):
            raise UsageError(f"--experts: {name} has no mixture of experts")
        if not target["top_k_experts"] <= experts <= target["num_experts"]:
            raise UsageError(f"--experts {experts}: use {target['top_k_experts']}..{target['num_experts']}")
        target["num_experts"] = experts
    if vocab is not None:
        if vocab < 256 or vocab % 256:
            raise UsageError(f"--vocab {vocab}: use a multiple of 256")
        target["vocab_size"] = assistant["text_config"]["vocab_size"] = vocab
        if target.get("vocab_size_per_layer_input"):
            target["vocab_size_per_layer_input"] = vocab
        if assistant["use_ordered_embeddings"]:
            _reduced_assistant_head(assistant, vocab)
    text = config_from_dict(target, source=f"shape {name}")
    drafter = config_from_dict(assistant, source=f"shape {name} assistant")
    assert isinstance(text, TextConfig) and isinstance(drafter, AssistantConfig)
    return text, drafter, target
