"""Whether a target GGUF and a drafter GGUF belong together (`gemma-mtp pair`).

The verdict is the runtime's: the rules of `gemma_mtp.pairing` (the same function that refuses a
pair when it is loaded), so `pair` accepts exactly the pairs `run` runs. What the files say beyond
that (layout, a legacy `requires_target_arch`, embedded token tables, sliding windows) is reported
as notes; a note that predicts poor drafting (different token tables) is also a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import AssistantConfig, TextConfig
from ..gguf.keys import K
from ..gguf.metadata import config_from_gguf
from ..gguf.reader import GGUFFile, open_gguf
from ..pairing import Check, failed_checks, pair_checks
from .inspect import head_description
from .paths import gguf_input

REQUIRES_TARGET_ARCH = "requires_target_arch"

__all__ = ["pair_gguf", "PairReport", "Check"]


@dataclass(frozen=True)
class PairReport:
    target: str
    draft: str
    compatible: bool
    verdict: str
    checks: list[Check]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tokenizer_note(target: GGUFFile, draft: GGUFFile) -> tuple[Check, str | None]:
    t_tokens, d_tokens = target.value(K.TOKENS), draft.value(K.TOKENS)
    if t_tokens is None or d_tokens is None:
        which = "drafter" if d_tokens is None else "target"
        return Check("tokenizer", None, f"not compared: the {which} file carries no tokenizer"), None
    if t_tokens == d_tokens:
        return Check("tokenizer", True, f"identical token tables ({len(t_tokens)} tokens)"), None
    first = next((i for i, (x, y) in enumerate(zip(t_tokens, d_tokens, strict=False)) if x != y), None)
    where = f"first difference at token {first}" if first is not None else "different lengths"
    detail = f"token tables differ ({len(t_tokens)} vs {len(d_tokens)} tokens, {where})"
    warning = f"{detail}: the drafter was trained on other token ids, so few drafts will be accepted"
    return Check("tokenizer", None, detail), warning


def _notes(
    tf: GGUFFile, df: GGUFFile, target: TextConfig, draft: AssistantConfig, layout: str | None
) -> tuple[list[Check], list[str]]:
    notes = [
        Check("drafter layout", None, f"{df.arch} ({layout} layout)"),
        Check("drafter head", None, head_description(draft)),
    ]
    # early conversions spell it with and without the architecture prefix
    required = df.arch_value(REQUIRES_TARGET_ARCH)
    if required is None:
        required = df.value(REQUIRES_TARGET_ARCH)
    if required is not None:
        same = required == tf.arch
        notes.append(
            Check(
                "required target",
                None,
                required
                if same
                else f"the file names {required}, the target is {tf.arch} "
                "(gemma-mtp does not read this key; the rules above decide)",
            )
        )
    tokenizer, warning = _tokenizer_note(tf, df)
    notes.append(tokenizer)
    window = draft.text.sliding_window
    notes.append(
        Check(
            "sliding window",
            None,
            str(target.sliding_window)
            if window == target.sliding_window
            else f"drafter {window}, target {target.sliding_window} (the drafter attends through the "
            "target's KV cache and so with the target's window)",
        )
    )
    return notes, [warning] if warning else []


def pair_gguf(target_path: str | Path, draft_path: str | Path) -> PairReport:
    """The runtime's rules (`pairing.pair_checks`) on the two files' configs, then notes."""
    tf, df = open_gguf(gguf_input(target_path, "pair")), open_gguf(gguf_input(draft_path, "pair"))
    target, _, _ = config_from_gguf(tf)
    draft, layout, _ = config_from_gguf(df)
    checks = pair_checks(target, draft)
    warnings: list[str] = []
    if isinstance(target, TextConfig) and isinstance(draft, AssistantConfig):
        notes, warnings = _notes(tf, df, target, draft, layout)
        checks += notes
    failed = failed_checks(checks)
    if failed:
        verdict = "not compatible: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
    else:
        verdict = "compatible: the drafter can draft for this target"
    return PairReport(str(tf.path), str(df.path), not failed, verdict, checks, warnings)
