"""Tiny random transformers checkpoints: the numerical reference for every Gemma variant we run.

Each ``build_*`` function seeds torch, builds one tiny model from transformers' own config class,
randomises every weight (norm scales, layer scalars and router scales included, so a loader that
skips or misreads one of them is caught), saves it with ``save_pretrained(safe_serialization=True)``,
reloads it from that directory (so the reference is exactly what the files hold) and returns
``Reference(path, model)`` with the transformers model in eval mode, float32, eager attention.

Tensor names as transformers 5.23 saves them (``save_pretrained`` of each class):

========================================  ===========================  ==============================
class                                     ``model_type`` (config.json)  text tensor prefix
========================================  ===========================  ==============================
Gemma4ForCausalLM                         gemma4_text                  ``model.*``
Gemma4ForConditionalGeneration            gemma4 (text_config nested)  ``model.language_model.*``
Gemma4UnifiedForCausalLM                  gemma4_unified_text          ``model.*``
Gemma4UnifiedForConditionalGeneration     gemma4_unified               ``model.language_model.*``
Gemma3ForCausalLM                         gemma3_text                  ``model.*``
Gemma3ForConditionalGeneration            gemma3                       ``language_model.model.*``
Gemma4AssistantForCausalLM                gemma4_assistant             ``model.*`` + top-level heads
Gemma4UnifiedAssistantForCausalLM         gemma4_unified_assistant     ``model.*`` + top-level heads
========================================  ===========================  ==============================

``lm_head.weight`` is never saved (tied to ``embed_tokens``). Gemma 4 layers also save the buffer
``layers.N.layer_scalar`` ([1]). Layers that reuse another layer's KV save no ``k_proj``/``v_proj``/
``k_norm``; full-attention layers with ``attention_k_eq_v`` save no ``v_proj``. MoE layers add
``router.{proj.weight,scale,per_expert_scale}``, ``experts.gate_up_proj`` [E, 2*I, H] and
``experts.down_proj`` [E, H, I] (no ``.weight`` suffix) and ``pre_feedforward_layernorm_2``,
``post_feedforward_layernorm_{1,2}``. PLE adds ``embed_tokens_per_layer``,
``per_layer_model_projection``, ``per_layer_projection_norm`` and per layer
``per_layer_input_gate``, ``per_layer_projection``, ``post_per_layer_input_norm``. Assistants add
``pre_projection``, ``post_projection`` and, with ordered embeddings, ``masked_embedding.centroids.weight``
and the int64 buffer ``masked_embedding.token_ordering`` [vocab]. Multimodal wrappers also hold
``model.vision_tower.*``/``model.audio_tower.*``/``model.embed_vision.*``/``model.embed_audio.*``
(Gemma 3: ``vision_tower.*``, ``multi_modal_projector.*``), which a text-only runtime must skip.

config.json as 5.23 writes it has no ``global_head_dim``/``num_global_key_value_heads``: it writes
``per_layer_config: {"<full layer idx>": {"head_dim": G, "num_key_value_heads": K}}`` instead
(``num_key_value_heads`` only when ``attention_k_eq_v``). Released checkpoints carry
``global_head_dim``/``num_global_key_value_heads`` and no ``per_layer_config``; ``hubify_config``
rewrites a saved config into that form (transformers reads both to the same model).

Findings about transformers' assisted generation (``generation/candidate_generator.py``,
``SinglePositionMultiTokenCandidateGenerator``) that matter for the speculative engine:

* Hidden state fed to the assistant: ``model_outputs.hidden_states[-1]``. ``capture_outputs``
  (``utils/output_capturing.py``, ``tie_last_hidden_states=True`` and no Gemma 4 config overrides
  it) replaces the last recorded decoder-layer output with ``last_hidden_state``, which is the
  output of the final ``norm``. So the assistant gets the target's *final-normed* hidden state,
  the same tensor the LM head reads, not the raw output of the last decoder layer (checked by
  ``test_parity_assistant.test_hf_hidden_state_fed_to_assistant_is_final_norm_output``).
* Which position: after prefill of P tokens, the hidden state of position P-1 (the one that
  predicted the last token) is concatenated after the target's scaled embedding of that last token
  (position P); ``position_ids = [[P]]`` for every draft step of the round; next steps feed
  ``post_projection(last_hidden_state)`` of the assistant. After a verify pass that accepted n
  drafts, it takes the target hidden state at index n of that pass (the last accepted token).
* Full-attention KV: the "store" layer's K/V as returned by the target's cache, sliced
  ``[:, :, :len(input_ids)]``. After prefill that is positions 0..P-1 (exactly the processed
  tokens). After a verify pass that rejected some drafts, ``len(input_ids)`` counts the new bonus
  token, which has no KV yet, so the slice keeps one stale entry: the K/V of the first rejected
  draft at the query's own position. Only when every draft was accepted is there no stale entry.
  Our contract (attend to ``0 <= positions < lengths``) is the clean version: drafts may differ
  from transformers' after a partial rejection; outputs stay lossless either way.
* Sliding KV: generate calls ``cache.activate_past_recording()``, so the store layer's
  ``DynamicSlidingWindowLayer.update`` returns the last ``sliding_window - 1 + q_len`` entries of
  the full history (``q_len`` = tokens in that target pass: the whole prompt at prefill, drafts+1
  when verifying). The same ``[:len(input_ids)]`` slice is applied, which is a no-op once the
  context exceeds the window (so up to ``q_len - n_accepted - 1`` rejected-draft entries stay at
  the end) and cuts from the oldest side otherwise.
  ``Gemma4AssistantForCausalLM.create_attention_masks`` then builds a *bidirectional*
  sliding-window mask for a single query at index 0 (``abs(q - kv) <= sliding_window``, inclusive)
  and flips it along kv: the assistant attends to the **last ``sliding_window + 1`` entries** of
  the sliding KV it is given (``sliding_window`` from the assistant's text_config, equal to the
  target's), i.e. positions p-W-1 .. p-1 for query position p when nothing is stale: W+1 past
  entries, where the target's own query at p reads W-1 past entries (p-W+1 .. p-1) plus itself,
  and a mask ``position > p - W`` would give the drafter only those W-1. Checked by
  ``test_parity_assistant.test_hf_assistant_sees_last_window_plus_one_sliding_entries``. With
  ``S <= sliding_window`` entries every semantics agrees (all are visible), which is why the
  numerical parity tests keep S within the window.

transformers 5.23 needs two patches to run assistants (FACTS.md); ``reference_patches()`` applies
them only inside a ``with`` block (``kv_sharing_modes`` is read only while modules are built):
(a) a config whose layers are all KV-shared (every assistant) gets all ``"reuse"`` instead of a
ValueError; (b) a config with no KV-shared layers (26B-A4B-, 31B-, 12B-like targets) marks the last
layer of each attention type ``"store"`` so the target exports ``shared_kv_states``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

VOCAB = 256
HIDDEN = 64
SLIDING_WINDOW = 8
# Non-default thetas, so a loader that ignores rope_parameters is caught.
GEMMA4_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 20_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 500_000.0},
}
S, F = "sliding_attention", "full_attention"


class Reference(NamedTuple):
    path: Path
    model: Any  # transformers PreTrainedModel, eval, float32


# --------------------------------------------------------------------------- patches


def _all_reuse_or_store_last(original):
    def kv_sharing_modes(self) -> list[str | None]:
        n, shared = self.num_hidden_layers, self.num_kv_shared_layers
        if shared == n:  # (a) assistant: every layer reads the target's KV
            return ["reuse"] * n
        if shared == 0:  # (b) target without KV sharing: still export the last KV of each type
            modes: list[str | None] = [None] * n
            for kind in set(self.layer_types):
                last = max(i for i, t in enumerate(self.layer_types) if t == kind)
                modes[last] = "store"
            return modes
        return original.fget(self)

    return property(kv_sharing_modes)


@contextlib.contextmanager
def reference_patches() -> Iterator[None]:
    """FACTS.md patches (a) and (b) for Gemma4TextConfig and Gemma4UnifiedTextConfig, undone on exit."""
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    from transformers.models.gemma4_unified.configuration_gemma4_unified import Gemma4UnifiedTextConfig

    saved = [(cls, cls.__dict__["kv_sharing_modes"]) for cls in (Gemma4TextConfig, Gemma4UnifiedTextConfig)]
    try:
        for cls, original in saved:
            cls.kv_sharing_modes = _all_reuse_or_store_last(original)
        yield
    finally:
        for cls, original in saved:
            cls.kv_sharing_modes = original


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Give every float weight a distinctive random value (init leaves norms at 1/0 and scalars at 1).

    Matrices get std 1/sqrt(last dim); for the embedding (scaled by sqrt(hidden) in the forward)
    that keeps the residual stream near unit RMS, so the layers rather than the token's own tied
    embedding decide the next token and greedy continuations do not just repeat the input.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point() or name.endswith(("inv_freq", "embed_scale")):
            continue
        if tensor.dim() <= 1:
            # norm scales (ones for Gemma 4, zeros for Gemma 3's 1+w), layer_scalar, router scales
            tensor.add_(0.2 * torch.randn(tensor.shape, generator=gen))
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * tensor.shape[-1] ** -0.5)


def _save_and_reload(model, path: Path, **save_kwargs) -> Reference:
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    with reference_patches():
        reloaded = type(model).from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return Reference(path, reloaded.eval())


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _build(model_cls, config, path: Path, seed: int, **save_kwargs) -> Reference:
    _quiet()
    torch.manual_seed(seed)
    with reference_patches():
        model = model_cls(config)
    randomize_(model, seed)
    return _save_and_reload(model.eval(), Path(path), **save_kwargs)


# --------------------------------------------------------------------------- targets


def gemma4_text_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=512,
        rope_parameters=json.loads(json.dumps(GEMMA4_ROPE)),
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
    )
    kwargs.update(overrides)
    kwargs["num_hidden_layers"] = len(kwargs["layer_types"])
    return kwargs


def _gemma4(path: Path, seed: int, text: dict[str, Any], conditional: bool, **save_kwargs) -> Reference:
    from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

    if conditional:
        config = Gemma4Config(text_config=text, vision_config=None, audio_config=None)
        return _build(Gemma4ForConditionalGeneration, config, path, seed, **save_kwargs)
    return _build(Gemma4ForCausalLM, Gemma4TextConfig(**text), path, seed, **save_kwargs)


def e2b_text_kwargs() -> dict[str, Any]:
    # 6 layers, the last 2 reuse KV: layer 4 reads layer 3 (sliding), layer 5 reads layer 2 (full).
    return gemma4_text_kwargs(
        layer_types=[S, S, F, S, S, F],
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
    )


def build_e2b_like(path: Path, *, conditional: bool = False, seed: int = 0, **save_kwargs) -> Reference:
    """E2B/E4B shape: PLE, KV sharing, double-wide MLP on shared layers, global_head_dim."""
    return _gemma4(path, seed, e2b_text_kwargs(), conditional, **save_kwargs)


def build_moe_like(path: Path, *, conditional: bool = False, seed: int = 1) -> Reference:
    """26B-A4B shape: MoE block beside the dense MLP, K=V on full layers, softcap, no PLE/KV sharing."""
    text = gemma4_text_kwargs(
        layer_types=[S, F, S, F],
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
        final_logit_softcapping=30.0,
    )
    return _gemma4(path, seed, text, conditional)


def build_dense31b_like(path: Path, *, conditional: bool = True, seed: int = 2) -> Reference:
    """31B shape: K=V full layers with their own kv-head count and head dim, final softcap, no PLE."""
    text = gemma4_text_kwargs(
        layer_types=[S, S, F, S, F],
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
        final_logit_softcapping=30.0,
    )
    return _gemma4(path, seed, text, conditional)


def build_unified_like(path: Path, *, conditional: bool = True, seed: int = 3) -> Reference:
    """12B "unified" shape (gemma4_unified_text). Text-only ForConditionalGeneration builds fine."""
    from transformers import (
        Gemma4UnifiedConfig,
        Gemma4UnifiedForCausalLM,
        Gemma4UnifiedForConditionalGeneration,
        Gemma4UnifiedTextConfig,
    )

    text = gemma4_text_kwargs(
        layer_types=[S, F, S, S, F],
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
        final_logit_softcapping=30.0,
    )
    for key in ("hidden_size_per_layer_input", "vocab_size_per_layer_input"):
        del text[key]  # not fields of the unified text config
    if conditional:
        config = Gemma4UnifiedConfig(text_config=text, vision_config=None, audio_config=None)
        return _build(Gemma4UnifiedForConditionalGeneration, config, path, seed)
    return _build(Gemma4UnifiedForCausalLM, Gemma4UnifiedTextConfig(**text), path, seed)


def gemma3_text_kwargs() -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=24,  # != head_dim, so a 1/sqrt(head_dim) scaling is caught
        sliding_window=SLIDING_WINDOW,
        layer_types=[S, S, F, S, S, F],
        rope_theta=500_000.0,
        rope_local_base_freq=20_000.0,
        max_position_embeddings=512,
    )


def build_gemma3_like(path: Path, *, seed: int = 4) -> Reference:
    """Gemma 3 text (270M/1B shape): (1 + w) norms, query_pre_attn_scalar, local/global rope thetas."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return _build(Gemma3ForCausalLM, Gemma3TextConfig(**gemma3_text_kwargs()), path, seed)


def build_gemma3_multimodal(path: Path, *, seed: int = 4) -> Reference:
    """Gemma3ForConditionalGeneration cannot be text-only (vision_config=None means a default SigLIP),
    so this one carries a tiny vision tower; its text tensors are ``language_model.model.*``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    config = Gemma3Config(
        text_config=gemma3_text_kwargs(),
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 3,
        eoi_token_index=VOCAB - 2,
    )
    return _build(Gemma3ForConditionalGeneration, config, path, seed)


def build_e2b_multimodal(path: Path, *, seed: int = 0) -> Reference:
    """Gemma4ForConditionalGeneration with tiny vision and audio towers, as released E2B/E4B are."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        patch_size=4,
        position_embedding_size=64,
    )
    audio = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        subsampling_conv_channels=[4, 4],
        output_proj_dims=16,
    )
    config = Gemma4Config(
        text_config=e2b_text_kwargs(),
        vision_config=vision,
        audio_config=audio,
        image_token_id=VOCAB - 1,
        audio_token_id=VOCAB - 2,
        video_token_id=VOCAB - 3,
        boi_token_id=VOCAB - 4,
        eoi_token_id=VOCAB - 5,
        boa_token_id=VOCAB - 6,
        eoa_token_index=VOCAB - 7,
    )
    return _build(Gemma4ForConditionalGeneration, config, path, seed)


# --------------------------------------------------------------------------- assistants


def text_config_of(model):
    return model.config.get_text_config()


def store_layers(target) -> dict[str, int]:
    """Index of the layer whose KV the assistant reads, per attention type, as built (with the patches)."""
    layers = target.get_decoder().layers
    return {
        layer.self_attn.layer_type: i
        for i, layer in enumerate(layers)
        if layer.self_attn.store_full_length_kv
    }


def assistant_config(target_text, *, use_ordered_embeddings: bool):
    """``(model class, config)`` of an assistant paired to a target text config: same vocab and
    attention shapes as the target's KV-producing layers, backbone = target width, own width 32."""
    unified = target_text.model_type == "gemma4_unified_text"
    full = target_text.per_layer_config[target_text.layer_types.index(F)]
    sliding = target_text.per_layer_config[target_text.layer_types.index(S)]
    text: dict[str, Any] = dict(
        vocab_size=target_text.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        layer_types=[S, S, F],
        num_attention_heads=4,
        num_key_value_heads=sliding.num_key_value_heads,
        head_dim=sliding.head_dim,
        global_head_dim=full.head_dim,
        attention_k_eq_v=target_text.attention_k_eq_v,
        sliding_window=target_text.sliding_window,
        max_position_embeddings=target_text.max_position_embeddings,
        rope_parameters=json.loads(json.dumps(target_text.rope_parameters)),
    )
    if target_text.attention_k_eq_v:
        text["num_global_key_value_heads"] = full.num_key_value_heads
    if not unified:
        text.update(hidden_size_per_layer_input=0, vocab_size_per_layer_input=0)
    head = dict(
        backbone_hidden_size=target_text.hidden_size,
        use_ordered_embeddings=use_ordered_embeddings,
        num_centroids=16,
        centroid_intermediate_top_k=4,
    )
    if unified:
        from transformers import Gemma4UnifiedAssistantConfig as Config
        from transformers import Gemma4UnifiedAssistantForCausalLM as Model
        from transformers import Gemma4UnifiedTextConfig as TextConfig
    else:
        from transformers import Gemma4AssistantConfig as Config
        from transformers import Gemma4AssistantForCausalLM as Model
        from transformers import Gemma4TextConfig as TextConfig
    return Model, Config(text_config=TextConfig(**text), **head)


def build_assistant(
    path: Path,
    target: Reference,
    *,
    use_ordered_embeddings: bool,
    seed: int = 5,
    num_assistant_tokens: int = 3,
) -> Reference:
    """A Gemma4(Unified)AssistantForCausalLM paired to ``target`` (see ``assistant_config``)."""
    kinds = set(store_layers(target.model))
    assert kinds == {S, F}, f"target exports KV for {kinds} only"
    model_cls, config = assistant_config(
        text_config_of(target.model), use_ordered_embeddings=use_ordered_embeddings
    )
    _quiet()
    torch.manual_seed(seed)
    with reference_patches():
        model = model_cls(config)
    randomize_(model, seed)
    if use_ordered_embeddings:
        # init leaves token_ordering at zeros; a real one is a permutation of the vocabulary
        vocab = config.text_config.vocab_size
        order = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
        model.masked_embedding.token_ordering.copy_(order)
    model.generation_config.num_assistant_tokens = num_assistant_tokens
    model.generation_config.num_assistant_tokens_schedule = "constant"
    reference = _save_and_reload(model.eval(), Path(path))
    reference.model.generation_config.num_assistant_tokens = num_assistant_tokens
    return reference


# --------------------------------------------------------------------------- running the reference


@torch.no_grad()
def hf_forward(model, tokens: torch.Tensor, **kwargs):
    """One no-cache forward over the whole sequence (tokens [B, T]); logits are float32."""
    return model(input_ids=tokens, use_cache=False, **kwargs)


@torch.no_grad()
def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    return hf_forward(model, tokens).logits.float()


@torch.no_grad()
def hf_target_state(model, tokens: torch.Tensor) -> dict[str, Any]:
    """What a drafter needs after the target processed ``tokens`` [1, S]: final-normed hidden states
    [1, S, D], the scaled input embedding [1, S, D] and the shared KV {kind: (keys, values)} with
    keys/values [1, kv_heads, S, head_dim]."""
    out = hf_forward(model, tokens, output_hidden_states=True, return_shared_kv_states=True)
    return {
        "logits": out.logits.float(),
        "hidden": out.hidden_states[-1],
        "embed": model.get_input_embeddings()(tokens),
        "shared_kv": {kind: (k, v) for kind, (k, v) in out.shared_kv_states.items()},
    }


@torch.no_grad()
def hf_greedy(model, prompt: list[int], n_new: int, assistant=None) -> list[int]:
    """Greedy continuation (new tokens only). eos is disabled so the length is always ``n_new``."""
    ids = torch.tensor([prompt])
    kwargs: dict[str, Any] = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), eos_token_id=None, pad_token_id=0, **kwargs
    )
    return out[0, len(prompt) :].tolist()


def hubify_config(path: Path) -> None:
    """Rewrite a saved Gemma 4 config.json the way released checkpoints spell it: ``global_head_dim``
    and ``num_global_key_value_heads`` instead of 5.23's ``per_layer_config``."""
    file = Path(path) / "config.json"
    config = json.loads(file.read_text())
    text = config.get("text_config", config)
    per_layer = text.pop("per_layer_config")
    overrides = next(iter(per_layer.values()))
    text["global_head_dim"] = overrides["head_dim"]
    text["num_global_key_value_heads"] = overrides.get("num_key_value_heads")
    file.write_text(json.dumps(config, indent=2))


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- registries

# name -> builder(path) for every target variant the parity tests cover
TARGET_BUILDERS: dict[str, Callable[[Path], Reference]] = {
    "e2b": lambda path: build_e2b_like(path),
    "e2b_conditional": lambda path: build_e2b_like(path, conditional=True),
    "moe": lambda path: build_moe_like(path),
    "dense31b": lambda path: build_dense31b_like(path),
    "unified": lambda path: build_unified_like(path),
    "gemma3": lambda path: build_gemma3_like(path),
}
# extra checkpoints for loader tests
EXTRA_BUILDERS: dict[str, Callable[[Path], Reference]] = {
    "e2b_sharded": lambda path: build_e2b_like(path, max_shard_size="20KB"),
    "e2b_multimodal": lambda path: build_e2b_multimodal(path),
    "gemma3_multimodal": lambda path: build_gemma3_multimodal(path),
}


# --------------------------------------------------------------------------- comparing ours with it

ATOL = 1e-4


def load_ours(path: Path):
    """``(model, config)`` from our HF loader (float32, CPU), in eval mode."""
    from gemma_mtp.weights.hf import load_hf_model

    loaded = load_hf_model(path, dtype="float32")
    model, config = loaded[0], loaded[1]  # a trailing load report, if any, is not part of the contract
    return model.eval(), config


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one thread, like the test process (see conftest.py)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def random_tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    """[batch, length] token ids avoiding the special ids 0-2."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, atol: float = ATOL) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(theirs.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    diff = (ours.float() - theirs.float()).abs()
    worst = diff.max().item()
    where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if worst > atol else ()
    assert worst <= atol, f"{what}: max abs diff {worst:.3g} > {atol} at index {where}"
