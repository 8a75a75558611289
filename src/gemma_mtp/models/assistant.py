"""Gemma 4 assistant drafters (`gemma4_assistant`, `gemma4_unified_assistant`).

An assistant has no KV of its own: each of its layers attends (queries only) to the target's KV of
the last KV-owning layer of the same kind. One draft step maps
concat(target embedding of the last token, a backbone-width hidden state) -> pre_projection ->
layers -> norm -> (logits, post_projection(state)); the projected state feeds the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import SharedKV
from ..config import AssistantConfig
from .common import Linear, RMSNorm, Rotary
from .gemma import DecoderLayer, GemmaModel, ScaledEmbedding

__all__ = ["AssistantModel", "AssistantOutput", "CentroidHead", "DraftContext"]


@dataclass(frozen=True)
class AssistantOutput:
    logits: torch.Tensor  # [B, T, V] float32
    hidden: torch.Tensor  # [B, T, backbone] post-projected state for the next step


@dataclass(frozen=True)
class DraftContext:
    """What every draft step of a round shares, made once per round by `AssistantModel.prepare`:
    all steps query the same positions against the same target KV, so the masks, the moves to the
    assistant's device and the rotary tables do not change between steps."""

    positions: torch.Tensor  # [B, T] on the assistant's device
    shared: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # kind -> (keys, values, mask)
    rotary: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]]  # filled on first use


class CentroidHead(nn.Module):
    """ "Ordered embeddings": score `num_centroids` clusters, expand the top-k clusters' tokens only.

    Tokens outside the chosen clusters get the row's smallest candidate logit minus 1, as the
    reference does (it uses the batch-wide minimum; per row keeps rows independent).
    """

    def __init__(self, config: AssistantConfig) -> None:
        super().__init__()
        text = config.text
        self.top_k = config.centroid_top_k
        self.num_centroids = config.num_centroids
        self.per_centroid = text.vocab_size // config.num_centroids
        self.centroids = Linear(text.hidden_size, config.num_centroids, bias=False)
        self.register_buffer("token_ordering", torch.zeros(text.vocab_size, dtype=torch.long))

    def candidates(
        self, x: torch.Tensor, table: torch.Tensor | nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, D] -> (candidate token ids [N, k*per], their logits [N, k*per] float32).
        `table`: the float token table [V, D], or a quantized one with `linear_rows` (GGUF blocks
        read in place: only the candidates' rows are read)."""
        top = torch.topk(self.centroids(x), k=self.top_k, dim=-1).indices  # [N, k]
        clusters = self.token_ordering.view(self.num_centroids, self.per_centroid)
        ids = clusters[top].reshape(x.shape[0], -1)  # [N, k*per]
        if not isinstance(table, torch.Tensor):
            return ids, table.linear_rows(x, ids)
        emb = table[ids]  # [N, k*per, D]
        return ids, torch.bmm(emb, x.to(emb.dtype)[:, :, None])[:, :, 0].float()

    @staticmethod
    def expand(ids: torch.Tensor, cand: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Full logits [..., V] from `candidates` [..., n]: each row's minimum - 1 off the candidates."""
        out = (cand.min(dim=-1, keepdim=True).values - 1.0).expand(*cand.shape[:-1], vocab_size).clone()
        return out.scatter_(-1, ids, cand)

    def distinct_candidates(self) -> bool:
        """Whether a row's candidate ids are always distinct (token_ordering is a permutation), which
        `speculative.base.greedy_from_candidates` needs; checked again after the buffer changes
        (an inference-mode tensor has no version counter: then again when it is replaced)."""
        order = self.token_ordering
        key = (order.data_ptr(), None if order.is_inference() else order._version)
        if getattr(self, "_distinct_key", None) != key:
            counts = torch.bincount(order.flatten().clamp(0, order.numel() - 1), minlength=order.numel())
            self._distinct = bool(order.min() >= 0) and bool((counts == 1).all())
            self._distinct_key = key
        return self._distinct

    def forward(self, x: torch.Tensor, table: torch.Tensor | nn.Module) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ids, cand = self.candidates(flat, table)
        vocab = self.token_ordering.numel()
        return self.expand(ids, cand, vocab).view(*x.shape[:-1], vocab)


class AssistantBody(nn.Module):
    def __init__(self, config: AssistantConfig) -> None:
        super().__init__()
        text = config.text
        self.embed_tokens = ScaledEmbedding(text.vocab_size, text.hidden_size, text.hidden_size**0.5)
        self.layers = nn.ModuleList(DecoderLayer(text, spec) for spec in text.layers)
        self.norm = RMSNorm(text.hidden_size, text.rms_norm_eps)
        self.rotary = nn.ModuleDict()
        for spec in text.layers:
            key = GemmaModel._rope_key(spec)
            if key not in self.rotary:
                self.rotary[key] = Rotary(text.rope[spec.kind], spec.head_dim)


class AssistantModel(nn.Module):
    def __init__(self, config: AssistantConfig) -> None:
        super().__init__()
        self.config = config
        width, backbone = config.text.hidden_size, config.backbone_hidden_size
        self.model = AssistantBody(config)
        self.pre_projection = Linear(2 * backbone, width, bias=False)
        self.post_projection = Linear(width, backbone, bias=False)
        self.masked_embedding = CentroidHead(config) if config.use_ordered_embeddings else None
        self.rope_keys = tuple(GemmaModel._rope_key(layer.spec) for layer in self.model.layers)

    # read from the final norm: quantized projections have no float weight to ask
    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    def forward(
        self, inputs_embeds: torch.Tensor, positions: torch.Tensor, shared_kv: dict[str, SharedKV]
    ) -> AssistantOutput:
        """inputs_embeds: [B, T, 2*backbone] (T is 1 when drafting); positions: [B, T]."""
        x = self.step(inputs_embeds, self.prepare(positions, shared_kv))
        return AssistantOutput(logits=self.head(x), hidden=self.post_projection(x))

    def prepare(self, positions: torch.Tensor, shared_kv: dict[str, SharedKV]) -> DraftContext:
        """The per-round part of `forward` for queries at `positions` [B, T] over `shared_kv`."""
        dev = self.device
        shared = {
            kind: (kv.keys.to(dev), kv.values.to(dev), kv.mask(positions.to(kv.positions.device)).to(dev))
            for kind, kv in shared_kv.items()
        }
        return DraftContext(positions=positions.to(dev), shared=shared, rotary={})

    def step(self, inputs_embeds: torch.Tensor, context: DraftContext) -> torch.Tensor:
        """One draft step up to the final norm [B, T, width], the per-round part made by `prepare`;
        `head` gives its logits and `post_projection` the next step's hidden input (a drafter
        skips the latter after its last step)."""
        x = self.pre_projection(inputs_embeds.to(self.device, self.dtype))
        for layer, key in zip(self.model.layers, self.rope_keys, strict=True):
            cos, sin = self._rotary(context, key, x.dtype)
            x = layer(x, None, cos, sin, None, None, context.shared)
        return self.model.norm(x)

    def _rotary(
        self, context: DraftContext, key: str, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tables = context.rotary.get((key, dtype))
        if tables is None:
            tables = context.rotary[key, dtype] = self.model.rotary[key](context.positions, dtype)
        return tables

    def head_candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A centroid head's candidates for x [B, T, width]: (ids, float32 logits), each [B, T, n];
        `CentroidHead.expand` makes `head(x)` of them. None for a dense head."""
        head = self.masked_embedding
        if head is None:
            return None
        ids, cand = head.candidates(x.reshape(-1, x.shape[-1]), self._token_table())
        return ids.view(*x.shape[:-1], -1), cand.view(*x.shape[:-1], -1)

    def _token_table(self) -> torch.Tensor | nn.Module:
        """The float token table, or a quantized table as loaded (never dequantized as a whole)."""
        embed = self.model.embed_tokens
        table = getattr(embed, "table", None)
        return table if table is not None and hasattr(table, "linear_rows") else embed.weight

    def head(self, x: torch.Tensor) -> torch.Tensor:
        if self.masked_embedding is not None:
            return self.masked_embedding(x, self._token_table())
        return self.model.embed_tokens.attend(x).float()
