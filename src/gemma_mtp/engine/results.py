"""What a generation returns: the CLI `--json` shape of DESIGN.md, as dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import Slot

__all__ = ["Timings", "Result", "Step", "slot_timings"]


@dataclass(kw_only=True)
class Timings:
    load_s: float = 0.0
    prompt_ms: float = 0.0  # prefill forward(s) and the first sampled token
    decode_ms: float = 0.0  # every forward after the prefill
    decode_tokens: int = 0  # tokens committed by the rounds in decode_ms (after the first round)
    decode_tokens_per_s: float = 0.0  # decode_tokens / decode time


def slot_timings(slot: Slot, *, load_s: float = 0.0) -> Timings:
    """A finished (or cancelled) slot's timings: the one place they are computed.

    ``prompt_ms`` is the prefill plus the round that fed the last prompt token and sampled the
    first token; ``decode_ms`` is every later round; the rate counts the tokens those later rounds
    committed. The first round can commit several tokens (with MTP it already verifies drafts when
    the prefill left the hidden state it needs): they came within ``prompt_ms``, so counting them in
    the rate would credit speculation with tokens whose time is not in ``decode_ms``.
    """
    decode_ms = max(slot.decode_ms - slot.first_round_ms, 0.0)
    n_after_first = max(len(slot.generated) - max(slot.first_round_tokens, 1), 0)
    return Timings(
        load_s=load_s,
        prompt_ms=slot.prompt_ms + slot.first_round_ms,
        decode_ms=decode_ms,
        decode_tokens=n_after_first,
        decode_tokens_per_s=n_after_first / (decode_ms / 1e3) if decode_ms > 0 else 0.0,
    )


@dataclass(kw_only=True)
class Step:
    """Tokens committed by one engine step (one forward for plain decoding)."""

    token_ids: list[int]
    text: str = ""


@dataclass(kw_only=True)
class Result:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    n_prompt: int = 0
    n_generated: int = 0
    stop_reason: str = "length"  # "eos" | "length" | "context"
    timings: Timings = field(default_factory=Timings)
    speculative: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
