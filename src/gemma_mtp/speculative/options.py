"""The speculative options every surface and the engine share: strategy names, the draft-length
ceiling and `SpecOptions` (torch-free, so that ``--help`` and flag parsing stay light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .synthetic import SyntheticAcceptance

__all__ = [
    "SPEC_TYPES",
    "SPEC_ALIASES",
    "SPEC_UNSUPPORTED",
    "SPEC_CHOICES",
    "MAX_DRAFT",
    "canonical_spec_type",
    "SpecOptions",
]

SPEC_TYPES = ("none", "mtp", "ngram", "draft")
# llama.cpp's names (`common/speculative.cpp`) for the strategies we have, with the same meaning:
# draft-simple drafts with a small target model; ngram-simple looks the last n-gram up in the
# context and drafts what followed it (our prompt lookup).
SPEC_ALIASES = {"draft-mtp": "mtp", "draft-simple": "draft", "ngram-simple": "ngram"}
# llama.cpp's names for strategies we do not have -> what to use instead.
SPEC_UNSUPPORTED = {
    "draft-eagle3": "mtp (an MTP assistant) or draft (a small target model)",
    "draft-dflash": "mtp (an MTP assistant) or draft (a small target model)",
    "draft-dspark": "mtp (an MTP assistant) or draft (a small target model)",
    "ngram-map-k": "ngram (prompt lookup, llama.cpp's ngram-simple)",
    "ngram-map-k4v": "ngram (prompt lookup, llama.cpp's ngram-simple)",
    "ngram-mod": "ngram (prompt lookup, llama.cpp's ngram-simple)",
    "ngram-cache": "ngram (prompt lookup, llama.cpp's ngram-simple)",
}
SPEC_CHOICES = (*SPEC_TYPES, *SPEC_ALIASES)  # what --spec-type and a request's "type" accept
# The draft-length ceiling: the KV cache's rollback headroom (sliding rings keep window + MAX_DRAFT
# + 1 slots); every cache, decoder and flag check takes it from here.
MAX_DRAFT = 16


def canonical_spec_type(name: str) -> str:
    """llama.cpp's names -> ours (``draft-mtp`` -> ``mtp``, ``draft-simple`` -> ``draft``,
    ``ngram-simple`` -> ``ngram``); its strategies we lack are a UsageError naming what to use."""
    if name in SPEC_UNSUPPORTED:
        raise UsageError(f"--spec-type {name} is not supported by gemma-mtp; use {SPEC_UNSUPPORTED[name]}")
    return SPEC_ALIASES.get(name, name)


@dataclass(frozen=True, kw_only=True)
class SpecOptions:
    """Speculation knobs; settable per request. Defaults follow llama.cpp where it has one."""

    type: str = "none"
    n_max: int = 3  # --spec-draft-n-max / --draft-max / --draft
    n_min: int = 0  # --spec-draft-n-min: a shorter draft is dropped (a plain step instead)
    p_min: float = 0.0  # --spec-draft-p-min: stop drafting when a draft's probability is below it
    ngram_max: int = 3  # n-gram lookup tries this length down to ngram_min
    ngram_min: int = 1
    autotune: bool = False  # --spec-autotune: the engine picks n_max (0..8) each round; n_max is the start
    # benchmarking only (synthetic.py): imposed acceptance, output text invalid; no surface sets it
    synthetic: SyntheticAcceptance | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", canonical_spec_type(self.type))
        if self.type not in SPEC_TYPES:
            raise UsageError(f"--spec-type {self.type!r} is not one of {', '.join(SPEC_TYPES)}")
        if not 0 <= self.n_max <= MAX_DRAFT:
            raise UsageError(f"--spec-draft-n-max {self.n_max} is out of range; use 0..{MAX_DRAFT}")
        if not 0 <= self.n_min <= max(self.n_max, 0):
            raise UsageError(f"--spec-draft-n-min {self.n_min} must be between 0 and n_max ({self.n_max})")
        if not 0.0 <= self.p_min <= 1.0:
            raise UsageError(f"--spec-draft-p-min {self.p_min} must be between 0 and 1")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise UsageError("ngram sizes must satisfy 1 <= ngram_min <= ngram_max")
        if self.synthetic is not None:
            if self.type == "none":
                raise UsageError(
                    "synthetic acceptance needs a speculative type (it imposes the accept decision)"
                )
            if not self.autotune and len(self.synthetic.rates) < self.n_max:
                raise UsageError(
                    f"synthetic acceptance has {len(self.synthetic.rates)} rates for n_max {self.n_max}; "
                    "give one per draft position"
                )
