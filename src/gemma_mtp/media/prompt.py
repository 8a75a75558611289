"""Media in a prompt: each placeholder token becomes begin marker + N soft-token slots + end marker.

The chat template writes one placeholder per image (`<|image|>`); transformers' `Gemma4Processor`
expands it into `<|image>` + `<|image|>` * N + `<image|>`, N the image's soft-token count, and the
model writes the tower's soft tokens over the N slots (`PromptMedia`: where, and what).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .image import MediaError

__all__ = ["MediaTokens", "PromptMedia", "expand_placeholders"]


@dataclass(frozen=True, kw_only=True)
class MediaTokens:
    """Token ids of the media markers; defaults are the released Gemma 4 vocabulary's."""

    image: int = 258_880  # <|image|>: placeholder and soft-token slot
    boi: int = 255_999  # <|image>
    eoi: int = 258_882  # <image|>
    audio: int = 258_881  # <|audio|>
    boa: int = 256_000  # <|audio>
    eoa: int = 258_883  # <audio|>

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> MediaTokens:
        """From a Gemma4Config config.json (keys missing there keep the released ids)."""
        keys = {
            "image": "image_token_id",
            "boi": "boi_token_id",
            "eoi": "eoi_token_id",
            "audio": "audio_token_id",
            "boa": "boa_token_id",
            "eoa": "eoa_token_index",
        }
        return cls(
            **{ours: int(data[theirs]) for ours, theirs in keys.items() if data.get(theirs) is not None}
        )

    @classmethod
    def from_vocab(cls, token_to_id) -> MediaTokens:
        """Looked up by text in a tokenizer (`token_to_id(text) -> id | None`); missing ones keep the
        released ids."""
        texts = {"image": "<|image|>", "boi": "<|image>", "eoi": "<image|>"}
        texts |= {"audio": "<|audio|>", "boa": "<|audio>", "eoa": "<audio|>"}
        found = {ours: token_to_id(text) for ours, text in texts.items()}
        return cls(**{ours: int(i) for ours, i in found.items() if i is not None})

    def markers(self, kind: str) -> tuple[int, int, int]:
        """(placeholder, begin, end) for "image" or "audio"."""
        return (self.image, self.boi, self.eoi) if kind == "image" else (self.audio, self.boa, self.eoa)


@dataclass
class PromptMedia:
    """Soft tokens and where they go: `spans[i] = (start, n)` in the expanded prompt, `embeds[i]` [n, D]."""

    spans: list[tuple[int, int]] = field(default_factory=list)
    embeds: list[torch.Tensor] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def overrides(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [1, length], values [n, D]) for the target's `embeds` argument, over positions 0..length-1."""
        mask = torch.zeros(1, length, dtype=torch.bool)
        for start, n in self.spans:
            if start + n > length:
                raise ValueError(f"media span {start}..{start + n} is past the {length} fed positions")
            mask[0, start : start + n] = True
        return mask, torch.cat(self.embeds, dim=0)


def expand_placeholders(
    ids: Sequence[int], counts: Sequence[int], tokens: MediaTokens, *, kind: str = "image"
) -> tuple[list[int], list[tuple[int, int]]]:
    """Replace the i-th placeholder of `kind` with begin + placeholder * counts[i] + end.
    Returns the new ids and the spans (start, n) of the soft-token slots."""
    placeholder, begin, end = tokens.markers(kind)
    found = sum(1 for t in ids if t == placeholder)
    if found != len(counts):
        raise MediaError(
            f"the prompt has {found} {kind} placeholder(s) but {len(counts)} {kind}(s) were given; "
            f"put one placeholder token ({placeholder}) where each {kind} goes, or use the chat template"
        )
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for t in ids:
        if t != placeholder:
            out.append(int(t))
            continue
        out.append(begin)
        spans.append((len(out), counts[k]))
        out.extend([placeholder] * counts[k])
        out.append(end)
        k += 1
    return out, spans
