"""The Gemma 4 26B-A4B mixture-of-experts block that runs beside the dense MLP.

An expert stack is a float parameter `[E, N, K]` or, kept as the GGUF file's blocks, a
`quant.torch_blocks.TorchBlockExperts` (`Experts.keep_blocks`): either way only the experts some
token picked are multiplied, and with blocks only those experts' weights are decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import observe
from ..config import TextConfig
from .common import ACTIVATIONS, Linear, RMSNorm

if TYPE_CHECKING:
    from ..quant.torch_blocks import TorchBlockExperts

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
    """Expert weights stored as 3-D tensors, as in the checkpoints: [E, 2*I, D] and [E, D, I]
    (float parameters, or GGUF blocks after `keep_blocks`)."""

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
            gate, up = _expert_linear(self.gate_up_proj, x[token], expert).chunk(2, dim=-1)
            hidden = self.act(gate) * up
            if observe.OBSERVER is not None:
                observe.OBSERVER(self.down_proj, hidden, expert)
            y = _expert_linear(self.down_proj, hidden, expert)
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out

    def keep_blocks(
        self, gate_up: TorchBlockExperts | None = None, down: TorchBlockExperts | None = None
    ) -> None:
        """Hold the stacks given as GGUF blocks instead of float parameters (the parameters go; the
        state dict then has `gate_up_proj.data` / `down_proj.data`, the file's bytes); a stack not
        given stays a float parameter (a file may quantize one of the two)."""
        for name, stack in (("gate_up_proj", gate_up), ("down_proj", down)):
            if stack is None:
                continue
            want = tuple(getattr(self, name).shape)
            if tuple(stack.shape) != want:
                raise ValueError(
                    f"experts.{name}: blocks of shape {list(stack.shape)}, the model has {list(want)}"
                )
            delattr(self, name)
            setattr(self, name, stack)


def _expert_linear(stack: torch.Tensor | TorchBlockExperts, x: torch.Tensor, expert: int) -> torch.Tensor:
    """x `[M, K]` times expert `expert`'s matrix `[N, K]` transposed, whichever form the stack has."""
    if isinstance(stack, torch.Tensor):
        return nn.functional.linear(x, stack[expert])
    return stack.linear(x, expert)
