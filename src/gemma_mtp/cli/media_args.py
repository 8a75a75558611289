"""Media flags shared by run and chat (llama.cpp's names): `--image FILE` (repeatable) and
`--mmproj FILE` (the vision tower's GGUF beside a GGUF target), and how images enter a prompt."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_mtp.errors import UsageError

if TYPE_CHECKING:
    from gemma_mtp.api import Engine

__all__ = ["add_media_arguments", "attach_mmproj", "user_content", "with_image_placeholders", "check_images"]


def add_media_arguments(parser: argparse.ArgumentParser, *, images: bool = True) -> None:
    group = parser.add_argument_group("media")
    if images:
        group.add_argument(
            "--image",
            dest="images",
            action="append",
            default=[],
            metavar="FILE",
            help="an image for the prompt (repeatable; with --chat each goes before the text, otherwise "
            "at each <|image|> in the prompt, or before it when there is none)",
        )
    group.add_argument(
        "--mmproj",
        metavar="FILE",
        default=None,
        help="the vision tower as llama.cpp's mmproj GGUF, for a GGUF target (a HF checkpoint has its own)",
    )


def check_images(paths: Sequence[str]) -> None:
    """Usage errors before any weights load: every --image must be a readable file."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--image {path}: no such file")


def attach_mmproj(engine: Engine, args: argparse.Namespace) -> None:
    mmproj = getattr(args, "mmproj", None)
    if mmproj is not None:
        if not Path(mmproj).is_file():
            raise UsageError(f"--mmproj {mmproj}: no such file")
        engine.mmproj = mmproj


def user_content(text: str, n_images: int) -> str | list[dict[str, Any]]:
    """A user turn's content for the chat template: the images first, then the text."""
    if not n_images:
        return text
    return [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": text}]


def with_image_placeholders(ids: list[int], n_images: int, placeholder: int, bos: int | None) -> list[int]:
    """A raw prompt without placeholders gets them at its start (after <bos>), as llama.cpp's mtmd
    puts its media marker before a prompt that has none."""
    if not n_images or placeholder in ids:
        return ids
    head = 1 if ids and bos is not None and ids[0] == bos else 0
    return [*ids[:head], *([placeholder] * n_images), *ids[head:]]
