"""The Gemma 4 audio tower (`Gemma4AudioModel` + `embed_audio`) as a pure module.

Log-mel features in, soft tokens (in the text model's width) out; no feature extraction (that is
media/audio.py), no prompt assembly. Module names mirror the checkpoint's `model.audio_tower.*` /
`model.embed_audio.*`, so the HF name table is one prefix rule (weights/towers.py).

What the tower does (transformers `modeling_gemma4.py`, a USM-style conformer):
- subsampling: two 3x3 stride-2 convolutions over (time, mel), each with a LayerNorm and ReLU,
  then a linear to the tower width: 4x fewer frames (one soft token per 40 ms at 16 kHz);
- conformer layers: half-step feed-forward, chunked local self-attention (blocks of `chunk_size`
  queries over `context_left - 1` past frames, Transformer-XL relative positions, per-dim query
  scale, logit softcap), a light causal depthwise convolution, a second half-step feed-forward;
  linears may clamp inputs/outputs (`use_clipped_linears`), activations are clipped to
  `gradient_clipping`;
- output projection (with bias) to `output_proj_dims`, then the embedder: unscaled RMS norm and a
  projection to the text width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFormatError
from .common import ACTIVATIONS, RMSNorm
from .vision import ClippedLinear

__all__ = ["AudioConfig", "AudioModel", "audio_config_from_dict", "subsampled_length"]

FIXED_EPS = (
    1e-6  # transformers builds the feed-forward and layer norms with the default eps, not the config's
)


@dataclass(frozen=True, kw_only=True)
class AudioConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    hidden_activation: str
    subsampling_conv_channels: tuple[int, int]
    conv_kernel_size: int
    residual_weight: float
    chunk_size: int
    context_left: int
    context_right: int
    logit_cap: float
    invalid_logit: float
    use_clipped_linears: bool
    rms_norm_eps: float
    gradient_clipping: float
    output_proj_dims: int
    text_hidden_size: int  # width of the soft tokens the embedder writes
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def audio_config_from_dict(
    audio: dict[str, Any], *, text_hidden_size: int, source: str = "config.json"
) -> AudioConfig:
    """Build from a config.json `audio_config` (model_type gemma4_audio), transformers' defaults."""
    kind = audio.get("model_type", "gemma4_audio")
    if kind != "gemma4_audio":
        raise ModelFormatError(f"{source}: audio_config model_type {kind!r} is not supported (gemma4_audio)")
    channels = tuple(int(c) for c in audio.get("subsampling_conv_channels", (128, 32)))
    if len(channels) != 2:
        raise ModelFormatError(
            f"{source}: audio subsampling_conv_channels {list(channels)} must have 2 entries"
        )
    return AudioConfig(
        hidden_size=int(audio.get("hidden_size", 1024)),
        num_layers=int(audio.get("num_hidden_layers", 12)),
        num_heads=int(audio.get("num_attention_heads", 8)),
        hidden_activation=audio.get("hidden_act") or "silu",
        subsampling_conv_channels=channels,  # type: ignore[arg-type]
        conv_kernel_size=int(audio.get("conv_kernel_size", 5)),
        residual_weight=float(audio.get("residual_weight", 0.5)),
        chunk_size=int(audio.get("attention_chunk_size", 12)),
        context_left=int(audio.get("attention_context_left", 13)),
        context_right=int(audio.get("attention_context_right", 0)),
        logit_cap=float(audio.get("attention_logit_cap", 50.0)),
        invalid_logit=float(audio.get("attention_invalid_logits_value", -1.0e9)),
        use_clipped_linears=bool(audio.get("use_clipped_linears", True)),
        rms_norm_eps=float(audio.get("rms_norm_eps", 1e-6)),
        gradient_clipping=float(audio.get("gradient_clipping", 1e10)),
        output_proj_dims=int(audio.get("output_proj_dims", 1536)),
        text_hidden_size=int(text_hidden_size),
        raw=audio,
    )


def subsampled_length(n_frames: int) -> int:
    """Frames after the two stride-2 convolutions (kernel 3, padding 1)."""
    for _ in range(2):
        n_frames = (n_frames - 1) // 2 + 1
    return n_frames


def _clip(x: torch.Tensor, limit: float) -> torch.Tensor:
    limit = min(limit, torch.finfo(x.dtype).max)  # no overflow when clamping in half precision
    return torch.clamp(x, -limit, limit)


class SubsampleLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(n_out, eps=eps, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T, F]; mask [B, T] (True: a real frame)."""
        x = self.conv((x * mask[:, None, :, None]).to(self.conv.weight.dtype))
        x = F.relu(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x, mask[:, ::2]


class SubsampleProjection(nn.Module):
    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        c0, c1 = config.subsampling_conv_channels
        self.layer0 = SubsampleLayer(1, c0, config.rms_norm_eps)
        self.layer1 = SubsampleLayer(c0, c1, config.rms_norm_eps)
        # (the mel axis is quartered too: 128 mel bins -> 32; transformers sizes it as c0 // 4)
        self.input_proj_linear = nn.Linear((c0 // 4) * c1, config.hidden_size, bias=False)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.layer0(features[:, None], mask)
        x, mask = self.layer1(x, mask)
        b, _, t, _ = x.shape
        return self.input_proj_linear(x.permute(0, 2, 3, 1).reshape(b, t, -1)), mask


class AudioFeedForward(nn.Module):
    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, c = config.hidden_size, config.use_clipped_linears
        self.ffw_layer_1 = ClippedLinear(d, 4 * d, c)
        self.ffw_layer_2 = ClippedLinear(4 * d, d, c)
        self.pre_layer_norm = RMSNorm(d, FIXED_EPS)
        self.post_layer_norm = RMSNorm(d, FIXED_EPS)
        self.act = ACTIVATIONS[config.hidden_activation]
        self.clip, self.scale = config.gradient_clipping, config.residual_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffw_layer_2(self.act(self.ffw_layer_1(self.pre_layer_norm(_clip(x, self.clip)))))
        return x + self.post_layer_norm(_clip(h, self.clip)) * self.scale


class AudioAttention(nn.Module):
    """Chunked local attention with a relative position bias (Transformer-XL's shift)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, c = config.hidden_size, config.use_clipped_linears
        self.heads, self.head_dim = config.num_heads, config.head_dim
        self.chunk = config.chunk_size
        self.past = config.context_left - 1
        self.future = config.context_right
        self.context = self.chunk + self.past + self.future
        self.cap, self.invalid = config.logit_cap, config.invalid_logit
        self.q_scale = (self.head_dim**-0.5) / math.log(2)
        self.k_scale = math.log(1 + math.e) / math.log(2)
        self.q_proj = ClippedLinear(d, d, c)
        self.k_proj = ClippedLinear(d, d, c)
        self.v_proj = ClippedLinear(d, d, c)
        self.post = ClippedLinear(d, d, c)
        self.relative_k_proj = nn.Linear(d, d, bias=False)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, n_blocks, chunk, H, D] (queries)."""
        b, t, h, d = x.shape
        n = -(-t // self.chunk)
        return F.pad(x, (0, 0, 0, 0, 0, n * self.chunk - t)).reshape(b, n, self.chunk, h, d)

    def _contexts(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, n_blocks, context, H, D]: each block's keys, `past` frames before it."""
        x = F.pad(x, (0, 0, 0, 0, self.past, self.future + self.chunk - 1))
        return torch.movedim(x.unfold(1, self.context, self.chunk), -1, 2)

    def _rel_shift(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, c, p = x.shape
        x = F.pad(x, (0, self.context + 1 - p)).reshape(b, h, n, c * (self.context + 1))
        return x[..., : c * self.context].reshape(b, h, n, c, self.context)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; positions [P, D] sinusoids; blocked [B, 1, n_blocks, chunk, context] True
        where a query may not look."""
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q = self.q_proj(x).float().view(shape) * self.q_scale * F.softplus(self.per_dim_scale)
        k = self.k_proj(x).float().view(shape) * self.k_scale
        v = self.v_proj(x).float().view(shape)
        q = self._blocks(q).permute(0, 3, 1, 2, 4)  # [B, H, n, chunk, D]
        k, v = self._contexts(k), self._contexts(v)  # [B, n, context, H, D]
        n = q.shape[2]
        content = q @ k.permute(0, 3, 1, 4, 2)  # [B, H, n, chunk, context]
        rel = self.relative_k_proj(positions).view(-1, self.heads, self.head_dim).to(q.dtype)
        bias = (q.reshape(b, self.heads, -1, self.head_dim) @ rel.permute(1, 2, 0)).reshape(
            b, self.heads, n, self.chunk, -1
        )
        logits = torch.tanh((content + self._rel_shift(bias)) / self.cap) * self.cap
        logits = logits.masked_fill(blocked, self.invalid)
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)
        out = (weights @ v.permute(0, 3, 1, 2, 4)).permute(0, 2, 3, 1, 4).reshape(b, n * self.chunk, -1)
        return self.post(out[:, :t].to(x.dtype))


class CausalConv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class LightConv1d(nn.Module):
    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        d, c = config.hidden_size, config.use_clipped_linears
        self.linear_start = ClippedLinear(d, 2 * d, c)
        self.linear_end = ClippedLinear(d, d, c)
        self.depthwise_conv1d = CausalConv1d(d, d, config.conv_kernel_size, groups=d, bias=False)
        self.pre_layer_norm = RMSNorm(d, config.rms_norm_eps)
        self.conv_norm = RMSNorm(d, config.rms_norm_eps)
        self.act = ACTIVATIONS[config.hidden_activation]
        self.clip = config.gradient_clipping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        h = self.depthwise_conv1d(h.transpose(1, 2)).transpose(1, 2)
        return x + self.linear_end(self.act(self.conv_norm(_clip(h, self.clip))))


class AudioLayer(nn.Module):
    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.feed_forward1 = AudioFeedForward(config)
        self.feed_forward2 = AudioFeedForward(config)
        self.self_attn = AudioAttention(config)
        self.lconv1d = LightConv1d(config)
        for name in ("norm_pre_attn", "norm_post_attn", "norm_out"):
            setattr(self, name, RMSNorm(config.hidden_size, FIXED_EPS))
        self.clip = config.gradient_clipping

    def forward(self, x: torch.Tensor, positions: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        x = self.feed_forward1(x)
        h = self.self_attn(self.norm_pre_attn(_clip(x, self.clip)), positions, blocked)
        x = x + self.norm_post_attn(_clip(h, self.clip))
        x = self.feed_forward2(self.lconv1d(x))
        return self.norm_out(_clip(x, self.clip))


class AudioTower(nn.Module):
    """`model.audio_tower`: log-mel features -> [B, T/4, output_proj_dims] and its frame mask."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.subsample_conv_projection = SubsampleProjection(config)
        self.layers = nn.ModuleList(AudioLayer(config) for _ in range(config.num_layers))
        self.output_proj = nn.Linear(config.hidden_size, config.output_proj_dims, bias=True)

    def position_table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Sinusoids for relative distances context//2 .. 0, [sin..., cos...] (not in checkpoints)."""
        cfg = self.config
        context = cfg.chunk_size + cfg.context_left - 1 + cfg.context_right
        n = cfg.hidden_size // 2
        inv = torch.exp(torch.arange(n, device=device) * -(math.log(10000.0) / max(n - 1, 1)))
        scaled = torch.arange(context // 2, -1, -1, device=device)[:, None] * inv[None]
        return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).to(dtype)

    def blocked_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] frame mask -> [B, 1, n_blocks, chunk, context], True where attention is not allowed:
        keys that are padding or outside the window (0 <= q - k < context_left - 1, or a future
        key within context_right), and every key of queries past the end."""
        cfg = self.config
        b, t = mask.shape
        chunk, past = cfg.chunk_size, cfg.context_left - 1
        context = chunk + past + cfg.context_right
        n = -(-t // chunk)
        q = (torch.arange(n, device=mask.device)[:, None] * chunk + torch.arange(chunk, device=mask.device))[
            ..., None
        ]
        k = q - q % chunk + torch.arange(context, device=mask.device) - past  # [n, chunk, context]
        dist = q - k
        window = ((dist >= 0) & (dist < past)) | ((dist < 0) & (-dist < cfg.context_right))
        inside = (k >= 0) & (k < t) & (q < t)
        valid = mask[:, k.clamp(0, t - 1)]  # [B, n, chunk, context]
        return ~(window & inside & valid)[:, None]

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, n_mel]; mask [B, T] bool. Returns (hidden [B, T', dims], mask [B, T'])."""
        x, mask = self.subsample_conv_projection(features, mask)
        positions = self.position_table(x.dtype, x.device)
        blocked = self.blocked_mask(mask)
        for layer in self.layers:
            x = layer(x, positions, blocked)
        return self.output_proj(x), mask


class AudioEmbedder(nn.Module):
    """`model.embed_audio`: unscaled RMS norm, then the projection into the text width."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        dims = config.output_proj_dims
        self.embedding_pre_projection_norm = RMSNorm(dims, config.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(dims, config.text_hidden_size, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(features))


class AudioModel(nn.Module):
    """Tower + embedder: `forward(features, mask) -> [soft tokens [n_i, text_width]]` per clip
    (the frames the mask marks as padding stripped), in the embedder's dtype."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_tower = AudioTower(config)
        self.embed_audio = AudioEmbedder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_audio.embedding_projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_audio.embedding_projection.weight.device

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        features, mask = features.to(self.device, self.dtype), mask.to(self.device, torch.bool)
        hidden, mask = self.audio_tower(features, mask)
        soft = self.embed_audio(hidden)
        return [soft[i][mask[i]] for i in range(soft.shape[0])]
