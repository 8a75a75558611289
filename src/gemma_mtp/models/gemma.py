"""Gemma 3 and Gemma 4 text targets (gemma3_text, gemma4_text, gemma4_unified_text).

One decoder covers the three families; the config decides which parts exist:
- Gemma 4: plain-scale RMS norms, v_norm, attention scale 1.0, proportional RoPE on full layers,
  per-layer head dims, `layer_scalar`, and optionally PLE, KV-shared layers, k_eq_v, MoE, double-wide MLP.
- 12B unified: Gemma 4 without PLE and MoE.
- Gemma 3: `1 + weight` norms, no v_norm, scale query_pre_attn_scalar**-0.5, no layer_scalar.
Module names mirror the Hugging Face checkpoints so that the HF name table is a prefix rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import ForwardPlan, KVCache, SharedKV
from ..config import FULL, LayerSpec, TextConfig
from ..ops import argmax_rows
from .common import (
    ACTIVATIONS,
    GatedMLP,
    Linear,
    RMSNorm,
    Rotary,
    attention,
    norm_rope,
    rope_inv_freq,
    softcap,
)
from .moe import Experts, Router

__all__ = ["GemmaModel", "TargetOutput", "rebuild_rotary"]


@dataclass(frozen=True)
class TargetOutput:
    hidden: torch.Tensor  # [B, T, D] after the final norm
    shared_kv: dict[str, SharedKV]  # what an assistant reads, keyed by layer kind


class Attention(nn.Module):
    def __init__(self, config: TextConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.scale = config.attention_scale
        self.logit_cap = config.attn_logit_softcapping
        gemma3 = config.family == "gemma3"
        offset = 1.0 if gemma3 else 0.0
        h, d, kvh = config.num_heads, spec.head_dim, spec.kv_heads
        self.q_proj = Linear(config.hidden_size, h * d, bias=False)
        self.q_norm = RMSNorm(d, config.rms_norm_eps, offset=offset)
        if spec.owns_kv:
            self.k_proj = Linear(config.hidden_size, kvh * d, bias=False)
            self.v_proj = None if spec.k_eq_v else Linear(config.hidden_size, kvh * d, bias=False)
            self.k_norm = RMSNorm(d, config.rms_norm_eps, offset=offset)
            self.v_norm = None if gemma3 else RMSNorm(d, config.rms_norm_eps, with_scale=False)
        self.o_proj = Linear(h * d, config.hidden_size, bias=False)
        self.fused_qkv = None  # optional: one module computing q (k, v) together (quant/fuse.py)

    def forward(self, x, cos, sin, plan: ForwardPlan, cache: KVCache, shared: dict):
        b, t, _ = x.shape
        d = self.spec.head_dim
        if self.fused_qkv is not None:
            parts = self.fused_qkv.forward(x)
        else:
            parts = (self.q_proj.forward(x),)
            if self.spec.owns_kv:
                parts += (self.k_proj.forward(x),) + (
                    () if self.v_proj is None else (self.v_proj.forward(x),)
                )
        q = norm_rope(self.q_norm, parts[0].view(b, t, -1, d), cos, sin).transpose(1, 2)
        if self.spec.owns_kv:
            k = parts[1].view(b, t, -1, d)
            v = k if self.v_proj is None else parts[2].view(b, t, -1, d)
            k = norm_rope(self.k_norm, k, cos, sin).transpose(1, 2)
            v = (v if self.v_norm is None else self.v_norm.forward(v)).transpose(1, 2)
            attend = cache.attend_full if self.spec.kind == FULL else cache.attend_sliding
            kv = attend(self.spec.index, plan, k, v)
            shared[self.spec.index] = kv
        else:
            # a KV-shared target layer reads an earlier layer; an assistant layer (kv_source -1)
            # reads the target's KV of its own kind
            kv = shared[self.spec.kv_source if self.spec.kv_source >= 0 else self.spec.kind]
        keys, values, mask = kv
        out = attention(q, keys, values, mask, scale=self.scale, logit_cap=self.logit_cap)
        return self.o_proj.forward(out)


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        offset = 1.0 if config.family == "gemma3" else 0.0
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config, spec)
        width = config.intermediate_size * (2 if spec.double_wide_mlp else 1)
        self.mlp = GatedMLP(hidden, width, config.hidden_activation)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm"):
            setattr(self, name, RMSNorm(hidden, eps, offset=offset))
        self.post_feedforward_layernorm = RMSNorm(hidden, eps, offset=offset)
        self.has_scalar = config.family != "gemma3"
        if self.has_scalar:
            self.register_buffer("layer_scalar", torch.ones(1))
        self.ple_dim = config.ple_dim
        if self.ple_dim:
            self.act = ACTIVATIONS[config.hidden_activation]
            self.per_layer_input_gate = Linear(hidden, self.ple_dim, bias=False)
            self.per_layer_projection = Linear(self.ple_dim, hidden, bias=False)
            self.post_per_layer_input_norm = RMSNorm(hidden, eps)
        self.activation = config.hidden_activation
        self.moe = config.num_experts > 0
        if self.moe:
            self.router = Router(config)
            self.experts = Experts(config)
            self.post_feedforward_layernorm_1 = RMSNorm(hidden, eps)
            self.post_feedforward_layernorm_2 = RMSNorm(hidden, eps)
            self.pre_feedforward_layernorm_2 = RMSNorm(hidden, eps)

    def forward(self, x, ple, cos, sin, plan, cache, shared):
        x = self._attention(x, cos, sin, plan, cache, shared)
        return self._finish(self._feed_forward(x), ple)

    def _attention(self, x, cos, sin, plan, cache, shared):
        # submodules are called through `.forward`: at one token per step nn.Module.__call__'s
        # hook handling is a measurable share of a layer (hooks on these modules do not fire)
        attn = self.self_attn.forward(self.input_layernorm.forward(x), cos, sin, plan, cache, shared)
        return x + self.post_attention_layernorm.forward(attn)

    def _finish(self, x, ple):
        if self.ple_dim:
            gate = self.act(self.per_layer_input_gate(x)) * ple
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(gate))
        if self.has_scalar:
            x = x * self.layer_scalar
        return x

    def _feed_forward(self, x):
        residual = x
        y = self.mlp.forward(self.pre_feedforward_layernorm.forward(x))
        if self.moe:
            flat = residual.reshape(-1, residual.shape[-1])
            weights, ids = self.router(flat)
            routed = self.experts(self.pre_feedforward_layernorm_2(flat), weights, ids).reshape(
                residual.shape
            )
            y = self.post_feedforward_layernorm_1(y) + self.post_feedforward_layernorm_2(routed)
        return residual + self.post_feedforward_layernorm.forward(y)


class ScaledEmbedding(nn.Embedding):
    """Embedding multiplied by sqrt(width), the scale rounded to the weight dtype as the reference does."""

    def __init__(self, num: int, dim: int, scale: float) -> None:
        super().__init__(num, dim)
        self.scale = scale
        self._scale: torch.Tensor | None = None  # `scale` in the weight's dtype, on its device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # the scale as a tensor made once (again only if the weight moves): a tensor made from host
        # data per call is a host-to-device copy a CUDA graph cannot capture; made outside
        # inference mode, so a later forward with autograd on may save it for backward
        w, scale = self.weight, self._scale
        if scale is None or scale.dtype != w.dtype or scale.device != w.device:
            with torch.inference_mode(False):
                scale = self._scale = torch.tensor(self.scale, dtype=w.dtype, device=w.device)
        return super().forward(tokens) * scale

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied output head: `hidden @ weight.T` (unscaled), in the weight dtype.
        `quant.QuantEmbedding` replaces this module with a quantized kernel."""
        w = self.weight
        return torch.nn.functional.linear(hidden.to(w.device, w.dtype), w)


class GemmaModel(nn.Module):
    """A text target: `forward(tokens, positions, cache) -> TargetOutput`; `logits(hidden)` separately."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_tokens = ScaledEmbedding(config.vocab_size, hidden, hidden**0.5)
        self.layers = nn.ModuleList(DecoderLayer(config, spec) for spec in config.layers)
        self.norm = RMSNorm(hidden, config.rms_norm_eps, offset=1.0 if config.family == "gemma3" else 0.0)
        # one rotary table per (kind, head_dim): full layers may use a larger head dim
        self.rotary = nn.ModuleDict()
        for spec in config.layers:
            key = self._rope_key(spec)
            if key not in self.rotary:
                self.rotary[key] = Rotary(config.rope[spec.kind], spec.head_dim)
        if config.ple_dim:
            n, p = config.num_layers, config.ple_dim
            self.embed_tokens_per_layer = ScaledEmbedding(config.ple_vocab_size, n * p, p**0.5)
            self.per_layer_model_projection = Linear(hidden, n * p, bias=False)
            self.per_layer_projection_norm = RMSNorm(p, config.rms_norm_eps)

    @staticmethod
    def _rope_key(spec: LayerSpec) -> str:
        return f"{spec.kind}_{spec.head_dim}"

    # read from the final norm: a quantized embedding has no float weight to ask
    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def make_cache(self, *, batch_size: int = 1, max_context: int = 4096, max_draft: int = 8) -> KVCache:
        devices = [next(layer.parameters()).device for layer in self.layers]
        return KVCache(
            self.config,
            batch_size=batch_size,
            max_context=max_context,
            max_draft=max_draft,
            dtype=self.dtype,
            devices=devices,
        )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The scaled input embedding (also what an assistant consumes for the last token)."""
        return self.embed_tokens(tokens.to(self.device))

    def _per_layer_inputs(self, tokens: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        n, p = self.config.num_layers, self.config.ple_dim
        token_part = self.embed_tokens_per_layer(tokens).reshape(*tokens.shape, n, p)
        context = self.per_layer_model_projection(h) * self.config.hidden_size**-0.5
        context = self.per_layer_projection_norm(context.reshape(*h.shape[:-1], n, p))
        return (context + token_part) * 2**-0.5  # [B, T, layers, ple_dim]

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        rows: list[int] | None = None,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TargetOutput:
        """tokens/positions [R, T] for the cache rows `rows` (default: all rows, R = batch size).
        `embeds` = (mask [R, T] bool, values [n, D]): input embeddings for the masked positions (media
        soft tokens), in order; those positions embed as the pad token for PLE, as transformers does."""
        plan = cache.plan(positions, rows)
        tokens = tokens.to(self.device)
        if embeds is not None:
            mask = embeds[0].to(self.device)
            tokens = tokens.masked_fill(mask, self.config.pad_token_id or 0)
            h = self.embed(tokens)
            h = h.masked_scatter(mask[..., None], embeds[1].to(h.device, h.dtype))
        else:
            h = self.embed(tokens)
        ple = self._per_layer_inputs(tokens, h) if self.config.ple_dim else None
        tables: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        shared: dict[int, tuple] = {}
        for i, layer in enumerate(self.layers):
            dev = layer.input_layernorm.weight.device
            h = h.to(dev)
            key = self._rope_key(layer.spec)
            if (key, dev) not in tables:
                rotary = self.rotary[key]
                cos, sin = rotary(positions.to(rotary.inv_freq.device), h.dtype)
                tables[key, dev] = cos.to(dev), sin.to(dev)
            cos, sin = tables[key, dev]
            layer_ple = ple[:, :, i, :].to(dev) if ple is not None else None
            h = layer(h, layer_ple, cos, sin, plan, cache, shared)
        h = self.norm(h.to(self.norm.weight.device))
        cache.finish(plan)
        kinds = {spec.kind for spec in self.config.layers if spec.owns_kv}
        return TargetOutput(hidden=h, shared_kv={kind: cache.shared_kv(kind) for kind in kinds})

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied head + final softcap, float32. Pass only the positions you need."""
        out = self.embed_tokens.attend(hidden).float()
        return softcap(out, self.config.final_logit_softcapping)

    # the exact pruned head (`models/head.py`, set at load by `models.head_build.install_output_head`)
    output_head = None

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """`logits(hidden).argmax(-1)` (first index on ties), int64 [...]: through the pruned output
        head where one is installed and the positions qualify, else through the full head."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        head = self.output_head
        if head is not None and head.applies(flat):
            ids = head.argmax(flat)
        elif flat.shape[0]:
            ids = torch.tensor(argmax_rows(self.logits(flat)), dtype=torch.long)
        else:
            ids = torch.zeros(0, dtype=torch.long)
        return ids.view(hidden.shape[:-1])

    def top_k(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The k largest logits per position and their ids, in a stable descending sort's order
        (float32 and int64 [..., k]), through the pruned output head; None where it cannot answer
        exactly (no pruned head, a softcap, an inconclusive bound): take `logits` then."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        head = self.output_head
        out = head.top_k(flat, k) if head is not None and head.applies(flat) else None
        if out is None:
            return None
        lead = (*hidden.shape[:-1], k)
        return out[0].view(lead), out[1].view(lead)


def rebuild_rotary(model: nn.Module, text: TextConfig) -> None:
    """Rotary tables are non-persistent buffers (in no checkpoint): rebuild every one of ``model``
    (a target or an assistant over ``text``) after a meta-device load."""
    specs = {GemmaModel._rope_key(s): s for s in text.layers}
    for name, module in model.named_modules():
        if isinstance(module, Rotary):
            spec = specs[name.split(".")[-1]]
            module.inv_freq = rope_inv_freq(text.rope[spec.kind], spec.head_dim)
