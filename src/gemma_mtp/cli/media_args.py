"""Media flags of run (llama.cpp's names): `--image FILE` and `--audio FILE` (repeatable), and how
they enter a prompt. `--mmproj FILE` (the towers' GGUF beside a GGUF target) is a load flag: `cli.model_args`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemma_mtp.errors import UsageError

__all__ = ["add_media_arguments", "user_content", "with_image_placeholders", "check_images"]


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media")
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
        "--audio",
        dest="audio",
        action="append",
        default=[],
        metavar="FILE",
        help="a WAV clip for the prompt (repeatable; placed as --image is, at <|audio|>, after the images)",
    )


def check_images(paths: Sequence[str], flag: str = "--image") -> None:
    """Usage errors before any weights load: every --image (--audio) must be a readable file."""
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{flag} {path}: no such file")


def user_content(text: str, n_images: int, n_audio: int = 0) -> str | list[dict[str, Any]]:
    """A user turn's content for the chat template: the images first, then the audio, then the text."""
    if not n_images and not n_audio:
        return text
    media = [*({"type": "image"} for _ in range(n_images)), *({"type": "audio"} for _ in range(n_audio))]
    return [*media, {"type": "text", "text": text}]


def with_image_placeholders(ids: list[int], n_images: int, placeholder: int, bos: int | None) -> list[int]:
    """A raw prompt without placeholders gets them at its start (after <bos>), as llama.cpp's mtmd
    puts its media marker before a prompt that has none."""
    if not n_images or placeholder in ids:
        return ids
    head = 1 if ids and bos is not None and ids[0] == bos else 0
    return [*ids[:head], *([placeholder] * n_images), *ids[head:]]
