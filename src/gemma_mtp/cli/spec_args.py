"""The speculative-decoding flags of ``run``, ``chat`` and ``serve``, declared once (llama.cpp's names),
and `SpecFlags`, what they say before anything is loaded.

``--spec-type`` may be left out: the engine then speculates with what was loaded
(`Engine.default_spec`: mtp with an assistant, draft with a draft model, none without a drafter),
so `SpecFlags.resolve` runs after loading. The alias ``draft-mtp`` and the draft-length ceiling come
from `speculative.base`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from gemma_mtp.errors import UsageError
from gemma_mtp.speculative.options import SPEC_CHOICES, SPEC_UNSUPPORTED, SpecOptions, canonical_spec_type

__all__ = ["SpecFlags", "add_spec_arguments", "spec_flags_from_args"]

_SPEC = SpecOptions()  # the speculative defaults live in the engine's options, not here


@dataclass(frozen=True, kw_only=True)
class SpecFlags:
    type: str | None = None  # None: the engine's default for what is loaded
    n_max: int | None = None  # None: SpecOptions' default (or a --profile's)
    n_min: int = _SPEC.n_min
    p_min: float | None = None  # None: SpecOptions' default (the demo drafter has its own)
    autotune: bool = False

    def __post_init__(self) -> None:
        if self.type is not None:
            object.__setattr__(self, "type", canonical_spec_type(self.type))
        self.resolve("none")  # range checks now, before any weights load

    @property
    def wants_drafter(self) -> bool:
        """Whether a given -md is loaded: --spec-type none and ngram draft without one."""
        return self.type in (None, "mtp", "draft")

    def check_drafter(self, model_draft: str | None) -> None:
        if self.type in ("mtp", "draft") and model_draft is None:
            raise UsageError(f"--spec-type {self.type} needs a drafter: pass -md/--model-draft")

    def resolve(self, default_type: str) -> SpecOptions:
        """The engine's options; ``default_type`` (`Engine.default_spec`) stands in for no --spec-type."""
        return SpecOptions(
            type=self.type or default_type,
            n_max=_SPEC.n_max if self.n_max is None else self.n_max,
            n_min=self.n_min,
            p_min=_SPEC.p_min if self.p_min is None else self.p_min,
            autotune=self.autotune,
        )


def add_spec_arguments(
    parser: argparse.ArgumentParser, *, title: str = "speculative decoding", p_min_help: str = ""
) -> None:
    defaults = SpecFlags()
    spec = parser.add_argument_group(title)
    spec.add_argument(
        "--spec-type",
        dest="spec_type",
        # llama.cpp's names we lack are accepted here so that SpecFlags names what to use instead
        choices=(*SPEC_CHOICES, *SPEC_UNSUPPORTED),
        default=defaults.type,
        help="default: what the drafter is (mtp for an assistant, draft for a draft model), else none",
    )
    spec.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft",
        dest="spec_draft_n_max",
        type=int,
        default=defaults.n_max,
        metavar="N",
        help=f"most tokens drafted per round (default: {_SPEC.n_max})",
    )
    spec.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        dest="spec_draft_n_min",
        type=int,
        default=defaults.n_min,
        metavar="N",
        help="fewest tokens drafted per round (default: %(default)s)",
    )
    spec.add_argument(
        "--spec-draft-p-min",
        "--draft-p-min",
        dest="spec_draft_p_min",
        type=float,
        default=defaults.p_min,
        metavar="P",
        help=f"stop drafting below this draft probability (default: {_SPEC.p_min}{p_min_help})",
    )
    spec.add_argument(
        "--spec-autotune",
        dest="spec_autotune",
        action="store_true",
        help="let an online controller pick each round's draft length",
    )


def spec_flags_from_args(args: argparse.Namespace, **overrides) -> SpecFlags:
    values = {
        "type": args.spec_type,
        "n_max": args.spec_draft_n_max,
        "n_min": args.spec_draft_n_min,
        "p_min": args.spec_draft_p_min,
        "autotune": args.spec_autotune,
    }
    return dataclasses.replace(SpecFlags(), **{**values, **overrides})
