"""Whether an MTP assistant can draft for a target: the runtime's rules on the two configs.

An assistant reads only the target's scaled input embeddings, its final hidden state and the KV of
the target's last KV-owning layer of each attention kind; so those shapes must agree, nothing else.
`pair_checks` states every rule as a `Check` (what `gemma-mtp pair` prints); `check_pair` raises on
the first that fails (what loading a pair does). One set of rules for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AssistantConfig, TextConfig
from .errors import ModelFormatError

__all__ = ["Check", "pair_checks", "check_pair", "failed_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: informational, not a rule the runtime applies (reason in detail)
    detail: str


def _rule(name: str, ok: bool, good: str, bad: str) -> Check:
    return Check(name, ok, good if ok else bad)


def _family(target: TextConfig, assistant: AssistantConfig) -> Check:
    # A Gemma 4 assistant can draft for a Gemma 3 target whose shapes agree
    # (`gemma-mtp train-drafter` makes such; the demo pair is one).
    if assistant.family == target.family:
        return Check("family", True, target.family)
    if assistant.family == "gemma4" and target.family == "gemma3":
        return Check("family", True, "gemma4 assistant over a gemma3 target (the shapes below decide)")
    return Check(
        "family",
        False,
        f"architecture mismatch: a {assistant.family} assistant cannot draft for a {target.family} target",
    )


def _attention(target: TextConfig, assistant: AssistantConfig) -> list[Check]:
    """Per attention kind: the target layer whose KV the assistant's layers read, its head dim,
    and whether the assistant's query heads can share its KV heads."""
    checks = []
    for kind in sorted({s.kind for s in assistant.text.layers}, reverse=True):  # sliding first
        layers = [s for s in assistant.text.layers if s.kind == kind]
        owner = target.last_kv_owner(kind)
        if owner is None:
            checks.append(
                Check(
                    f"KV source ({kind})",
                    False,
                    f"the target has no {kind} layer for assistant layer {layers[0].index}",
                )
            )
            continue
        src = target.layers[owner]
        wrong = next((s for s in layers if s.head_dim != src.head_dim), None)
        checks.append(
            Check(
                f"head dim ({kind})",
                wrong is None,
                f"{src.head_dim} (the assistant reads target layer {owner})"
                if wrong is None
                else f"head dim mismatch on {kind}: assistant {wrong.head_dim}, target {src.head_dim}",
            )
        )
        heads = assistant.text.num_heads
        checks.append(
            _rule(
                f"KV heads ({kind})",
                heads % src.kv_heads == 0,
                f"{heads} assistant query heads share target layer {owner}'s {src.kv_heads} KV heads",
                f"head count mismatch on {kind}: {heads} assistant query heads cannot share the "
                f"target's {src.kv_heads} KV heads",
            )
        )
    return checks


def pair_checks(target: TextConfig | AssistantConfig, assistant: TextConfig | AssistantConfig) -> list[Check]:
    """Every rule the runtime applies to (target, assistant), each as a `Check`; the rules after
    the first two are only checked when both files are what they must be."""
    checks = [
        _rule(
            "target",
            not target.is_assistant,
            f"a {target.family} target",
            "the target is an MTP assistant (drafter), not a target; pass the model it drafts for",
        ),
        _rule(
            "assistant",
            isinstance(assistant, AssistantConfig),
            f"a {assistant.family} MTP assistant",
            "the draft model is not an MTP assistant; use --spec-type draft for a small target",
        ),
    ]
    if target.is_assistant or not isinstance(assistant, AssistantConfig):
        return checks
    assert isinstance(target, TextConfig)
    checks += [
        _family(target, assistant),
        _rule(
            "backbone width",
            assistant.backbone_hidden_size == target.hidden_size,
            str(target.hidden_size),
            f"hidden size mismatch: the assistant expects a backbone of width "
            f"{assistant.backbone_hidden_size}, the target has {target.hidden_size}; use the assistant "
            "released with this target",
        ),
        _rule(
            "vocabulary size",
            assistant.vocab_size == target.vocab_size,
            str(target.vocab_size),
            f"vocabulary mismatch: assistant {assistant.vocab_size} tokens, target {target.vocab_size}",
        ),
        *_attention(target, assistant),
    ]
    return checks


def failed_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.ok is False]


def check_pair(target: TextConfig, assistant: AssistantConfig) -> None:
    """Refuse an assistant that was not made for this target, saying which property differs."""
    failed = failed_checks(pair_checks(target, assistant))
    if failed:
        raise ModelFormatError(failed[0].detail)
