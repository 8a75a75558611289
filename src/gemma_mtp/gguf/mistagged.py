"""Drafter files tagged as targets: an MTP assistant converted with `general.architecture = gemma4`.

Such files circulate (early conversions of the assistants). Their body is a target body whose
layers own no K/V, and they carry a drafter's two projections; llama.cpp's gemma4 loader creates
every tensor but those two and fails with "wrong number of tensors; expected 49, got 47". The
projection names say the file is a drafter and in which layout's naming; its keys are under
`gemma4.`; the target width is the layout's key when present, else half the pre-projection's input
(the projection reads the target's embedding and hidden state, concatenated).
"""

from __future__ import annotations

from .keys import DRAFTER_LAYOUTS
from .names import DRAFTER_HEADS
from .reader import GGUFFile, tensor_shape

__all__ = ["mistagged_layout", "mistagged_message", "backbone_width"]

PRE_PROJECTION = "pre_projection.weight"


def mistagged_layout(gf: GGUFFile) -> str | None:
    """The drafter layout whose projection names a `gemma4`-tagged file carries, or None."""
    if gf.arch != "gemma4":
        return None
    for layout, heads in DRAFTER_HEADS.items():
        if heads[PRE_PROJECTION] in gf.tensors:
            return layout
    return None


def mistagged_message(gf: GGUFFile, layout: str) -> str:
    n = len(gf.tensors)
    return (
        f"{gf.path}: an MTP assistant (drafter) tagged general.architecture = gemma4, as if it were a "
        f"target: it holds a drafter's projections ({DRAFTER_HEADS[layout][PRE_PROJECTION]}) and no K/V "
        f"of its own ({n} tensors; llama.cpp reports 'wrong number of tensors; expected {n}, got {n - 2}'). "
        f"Rewrite it as a drafter: gemma-mtp convert {gf.path.name} OUT.gguf --layout mainline "
        f"(or --layout legacy / ik), then pass OUT.gguf as the draft model"
    )


def backbone_width(gf: GGUFFile, layout: str) -> int | None:
    """The target width a drafter file states (any layout's key under its arch), else the one its
    pre-projection implies; None when neither is there."""
    keys = [DRAFTER_LAYOUTS[layout].backbone_key] + [s.backbone_key for s in DRAFTER_LAYOUTS.values()]
    for key in keys:
        value = gf.arch_value(key)
        if value is not None:
            return int(value)
    pre = gf.tensors.get(DRAFTER_HEADS[layout][PRE_PROJECTION])
    return tensor_shape(pre)[1] // 2 if pre is not None else None
