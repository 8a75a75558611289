"""The Gemma 4 vision tower (`Gemma4VisionModel` + `embed_vision`) as a pure module.

Patches in, soft tokens (in the text model's width) out; no preprocessing, no prompt assembly.
Module names mirror the checkpoint's `model.vision_tower.*` / `model.embed_vision.*`, so the HF
name table is one prefix rule (weights/towers.py).

What the tower does (transformers `modeling_gemma4.py`):
- patch embedder: `input_proj(2 * (pixels - 0.5))` plus learned x and y position embeddings;
- encoder layers: bidirectional attention over the image's patches (scale 1.0, q/k RMS norms,
  unscaled v norm, 2-D axial RoPE: the first half of each head rotates with x, the second with y),
  Gemma-style sandwich norms and a gated MLP; linears may clamp inputs/outputs (`use_clipped_linears`);
- pooler: average of each `k x k` block of patches (k = pooling_kernel_size), times sqrt(width),
  optionally standardized (`(h - std_bias) * std_scale`), in float32;
- embedder: unscaled RMS norm, then a projection to the text width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFormatError
from .common import ACTIVATIONS, RMSNorm

__all__ = ["VisionConfig", "VisionModel", "vision_config_from_dict"]


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    kv_heads: int
    head_dim: int
    patch_size: int
    pooling_kernel_size: int
    position_embedding_size: int
    rope_theta: float
    rms_norm_eps: float
    hidden_activation: str
    use_clipped_linears: bool
    standardize: bool
    text_hidden_size: int  # width of the soft tokens the embedder writes
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2


def vision_config_from_dict(
    vision: dict[str, Any], *, text_hidden_size: int, source: str = "config.json"
) -> VisionConfig:
    """Build from a config.json `vision_config` (model_type gemma4_vision)."""
    kind = vision.get("model_type", "gemma4_vision")
    if kind != "gemma4_vision":
        raise ModelFormatError(
            f"{source}: vision_config model_type {kind!r} is not supported (gemma4_vision)"
        )
    rope = vision.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") != "axial":
        raise ModelFormatError(
            f"{source}: vision rope_type {rope.get('rope_type')!r} is not supported (axial)"
        )
    hidden = int(vision.get("hidden_size", 768))
    heads = int(vision.get("num_attention_heads", 12))
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=int(vision.get("intermediate_size", 3072)),
        num_layers=int(vision.get("num_hidden_layers", 16)),
        num_heads=heads,
        kv_heads=int(vision.get("num_key_value_heads", heads)),
        head_dim=int(vision.get("head_dim") or hidden // heads),
        patch_size=int(vision.get("patch_size", 16)),
        pooling_kernel_size=int(vision.get("pooling_kernel_size", 3)),
        position_embedding_size=int(vision.get("position_embedding_size", 10 * 1024)),
        rope_theta=float(rope.get("rope_theta", 100.0)),
        rms_norm_eps=float(vision.get("rms_norm_eps", 1e-6)),
        hidden_activation=vision.get("hidden_activation") or "gelu_pytorch_tanh",
        use_clipped_linears=bool(vision.get("use_clipped_linears", False)),
        standardize=bool(vision.get("standardize", False)),
        text_hidden_size=int(text_hidden_size),
        raw=vision,
    )


class ClippedLinear(nn.Module):
    """`linear` (no bias) with optional input/output clamps; checkpoint names `<name>.linear.weight`,
    `<name>.input_min` ... (scalars)."""

    def __init__(self, n_in: int, n_out: int, clipped: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=False)
        self.clipped = clipped
        if clipped:
            for name, value in (("input_min", -1), ("input_max", 1), ("output_min", -1), ("output_max", 1)):
                self.register_buffer(name, torch.tensor(value * float("inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clipped:
            x = torch.clamp(x, self.input_min, self.input_max)
        x = self.linear(x)
        if self.clipped:
            x = torch.clamp(x, self.output_min, self.output_max)
        return x


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def axial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, N, H, D]; cos/sin [B, N, 2, D/2] (x then y): each half of D rotates with one axis."""
    half = x.shape[-1] // 2
    parts = [
        _rotate(x[..., a * half : (a + 1) * half], cos[:, :, None, a], sin[:, :, None, a]) for a in (0, 1)
    ]
    return torch.cat(parts, dim=-1)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        h, kvh, d, c = config.num_heads, config.kv_heads, config.head_dim, config.use_clipped_linears
        self.head_dim, self.groups = d, h // kvh
        self.q_proj = ClippedLinear(config.hidden_size, h * d, c)
        self.k_proj = ClippedLinear(config.hidden_size, kvh * d, c)
        self.v_proj = ClippedLinear(config.hidden_size, kvh * d, c)
        self.o_proj = ClippedLinear(h * d, config.hidden_size, c)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)
        self.v_norm = RMSNorm(d, config.rms_norm_eps, with_scale=False)

    def forward(self, x, cos, sin, mask):
        b, n, _ = x.shape
        d = self.head_dim
        q = axial_rope(self.q_norm(self.q_proj(x).view(b, n, -1, d)), cos, sin).transpose(1, 2)
        k = axial_rope(self.k_norm(self.k_proj(x).view(b, n, -1, d)), cos, sin).transpose(1, 2)
        v = self.v_norm(self.v_proj(x).view(b, n, -1, d)).transpose(1, 2)
        if self.groups > 1:
            k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        # [B, heads, N, head_dim]; mask [B, 1, 1, N]: padding patches are never attended to
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        hidden, inter, c = config.hidden_size, config.intermediate_size, config.use_clipped_linears
        self.gate_proj = ClippedLinear(hidden, inter, c)
        self.up_proj = ClippedLinear(hidden, inter, c)
        self.down_proj = ClippedLinear(inter, hidden, c)
        self.act = ACTIVATIONS[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.self_attn = VisionAttention(config)
        self.mlp = VisionMLP(config)
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            setattr(self, name, RMSNorm(config.hidden_size, config.rms_norm_eps))

    def forward(self, x, cos, sin, mask):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class PatchEmbedder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.input_proj = nn.Linear(config.patch_dim, config.hidden_size, bias=False)
        self.position_embedding_table = nn.Parameter(
            torch.ones(2, config.position_embedding_size, config.hidden_size)
        )

    def forward(self, patches: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        w = self.input_proj.weight
        h = self.input_proj((2 * (patches - 0.5)).to(w.dtype))
        table = self.position_embedding_table
        p = positions.clamp(min=0)
        pos = F.embedding(p[..., 0], table[0]) + F.embedding(p[..., 1], table[1])
        return h + torch.where(padding[..., None], 0.0, pos)


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_layers))


class VisionTower(nn.Module):
    """`model.vision_tower`: patches -> pooled float32 features (before the embedder)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedder = PatchEmbedder(config)
        self.encoder = VisionEncoder(config)
        if config.standardize:
            self.register_buffer("std_bias", torch.zeros(config.hidden_size))
            self.register_buffer("std_scale", torch.ones(config.hidden_size))
        spatial = config.head_dim // 2
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # [B, N, 2, D/4]
        freqs = torch.cat([freqs, freqs], dim=-1)  # [B, N, 2, D/2]
        return freqs.cos().to(dtype), freqs.sin().to(dtype)

    def forward(self, patches: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """patches [B, N, 3*patch^2] in [0, 1]; positions [B, N, 2] (x, y), (-1, -1) for padding.
        Returns one float32 [n_soft, hidden] per image (padding stripped)."""
        padding = (positions == -1).all(dim=-1)  # [B, N]
        h = self.patch_embedder(patches, positions, padding)
        cos, sin = self.rope_tables(positions, h.dtype)
        mask = (~padding)[:, None, None, :]
        for layer in self.encoder.layers:
            h = layer(h, cos, sin, mask)
        out = []
        k = self.config.pooling_kernel_size
        for i in range(h.shape[0]):
            valid = ~padding[i]
            pooled = _pool(h[i][valid].float(), positions[i][valid], k) * self.config.hidden_size**0.5
            if self.config.standardize:
                pooled = (pooled - self.std_bias.float()) * self.std_scale.float()
            out.append(pooled)
        return out


def _pool(h: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """Average each k x k block of patches, blocks in row-major order. h [N, D]; positions [N, 2]."""
    n = h.shape[0]
    width = int(positions[:, 0].max()) + 1
    if n % (k * k) or width % k:
        raise ValueError(f"cannot pool {n} patches ({width} wide) in {k}x{k} blocks")
    block = (positions[:, 0] // k) + (width // k) * (positions[:, 1] // k)
    pooled = torch.zeros(n // (k * k), h.shape[1], dtype=h.dtype, device=h.device)
    return pooled.index_add_(0, block.long(), h / (k * k))


class VisionEmbedder(nn.Module):
    """`model.embed_vision`: unscaled RMS norm, then the projection into the text width."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, with_scale=False
        )
        self.embedding_projection = nn.Linear(config.hidden_size, config.text_hidden_size, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(features))


class VisionModel(nn.Module):
    """Tower + embedder: `forward(patches, positions) -> [soft tokens [n_i, text_width]]` per image,
    in the embedder's dtype."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config)
        self.embed_vision = VisionEmbedder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_vision.embedding_projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_vision.embedding_projection.weight.device

    def forward(self, patches: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        patches, positions = patches.to(self.device), positions.to(self.device)
        features = self.vision_tower(patches, positions)
        return [self.embed_vision(f.to(self.dtype)) for f in features]
