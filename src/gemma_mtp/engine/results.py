"""What a generation returns: the CLI `--json` shape of DESIGN.md, as dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Timings", "Result", "Step"]


@dataclass(kw_only=True)
class Timings:
    load_s: float = 0.0
    prompt_ms: float = 0.0  # prefill forward(s) and the first sampled token
    decode_ms: float = 0.0  # every forward after the prefill
    decode_tokens_per_s: float = 0.0  # tokens committed after the first / decode time


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
