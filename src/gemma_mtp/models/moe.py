"""The Gemma 4 26B-A4B mixture-of-experts block that runs beside the dense MLP."""

from __future__ import annotations

import torch
from torch import nn

from .. import observe
from ..config import TextConfig
from .common import ACTIVATIONS, Linear, RMSNorm

__all__ = ["Router", "Experts"]


class Router(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.top_k = config.top_k_experts
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, with_scale=False)
        self.proj = Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.root_size = config.hidden_size**-0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, D] -> (weights [N, k], expert ids [N, k])."""
        scores = self.proj(self.norm(x) * self.scale * self.root_size)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, k=self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[ids], ids


class Experts(nn.Module):
    """Expert weights stored as 3-D tensors, as in the checkpoints: [E, 2*I, D] and [E, D, I]."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        e, d, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        self.act = ACTIVATIONS[config.hidden_activation]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x: [N, D]; only the experts some token picked are computed."""
        out = torch.zeros_like(x)
        for expert in torch.unique(ids).tolist():
            token, slot = torch.where(ids == expert)
            if observe.OBSERVER is not None:
                observe.OBSERVER(self.gate_up_proj, x[token], expert)
            gate, up = nn.functional.linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            hidden = self.act(gate) * up
            if observe.OBSERVER is not None:
                observe.OBSERVER(self.down_proj, hidden, expert)
            y = nn.functional.linear(hidden, self.down_proj[expert])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out
