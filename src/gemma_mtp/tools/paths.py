"""The paths the tools take: a GGUF input (one error naming a directory given instead) and an
output that is not the input and whose folder exists (`gguf.atomic.check_output_dir`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError, UsageError
from ..gguf.atomic import check_output_dir
from ..gguf.formats import HF_DIR, model_format

__all__ = ["gguf_input", "check_output", "check_distinct"]


def gguf_input(path: str | Path, command: str) -> Path:
    """`path` as the GGUF input of `gemma-mtp COMMAND`. A directory is refused saying what the
    command takes; whatever else is wrong with a file, `open_gguf` says when it opens it."""
    path = Path(path)
    try:
        kind = model_format(path)
    except ModelFormatError:  # missing, or not a GGUF: open_gguf's own message is the precise one
        return path
    if kind == HF_DIR:
        raise ModelFormatError(
            f"{path}: is a directory; gemma-mtp {command} takes a GGUF file (a Hugging Face model "
            f"directory converts to one with: gemma-mtp convert {path} OUT.gguf)"
        )
    return path


def check_distinct(src: Path, dst: Path) -> None:
    """Refuse to write over the input: the temp-file rename would replace it with the output."""
    if src.exists() and dst.exists() and os.path.samefile(src, dst):
        raise UsageError(f"OUT is the input file {src}; write to another path")


def check_output(src: str | Path, dst: str | Path) -> Path:
    """`dst` as the output of a tool reading `src`: not `src` itself, in a folder that exists
    (checked before any work is done; llama.cpp's tools fail on a missing folder too)."""
    src, dst = Path(src), Path(dst)
    check_distinct(src, dst)
    check_output_dir(dst)
    return dst
