"""Building a model's skeleton on the meta device (names and shapes, no memory) for a loader to fill.

The modules' weight initializers are skipped while it is built: on meta tensors they do nothing
useful, and `normal_` there goes through torch's reference implementations, whose first use
imports torch._dynamo (about a second and ~100 MB of resident memory for nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..config import AssistantConfig, TextConfig
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel

__all__ = ["meta_model"]

_INITS = (
    "normal_",
    "uniform_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "zeros_",
    "ones_",
    "constant_",
)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    saved = {name: getattr(nn.init, name) for name in _INITS}
    try:
        for name in _INITS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def meta_model(config: TextConfig | AssistantConfig) -> nn.Module:
    """The model for `config` on the meta device, its initializers skipped."""
    with torch.device("meta"), _no_init():
        return AssistantModel(config) if isinstance(config, AssistantConfig) else GemmaModel(config)
