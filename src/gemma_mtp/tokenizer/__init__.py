"""Text to token ids and back, built with the `tokenizers` library, tokenizing as llama.cpp does.

Two sources: a Hugging Face directory (``tokenizer.json`` + ``tokenizer_config.json``, `from_hf`)
or the tokenizer a GGUF file carries in its metadata (`from_gguf`), read with the one GGUF parser
(`gemma_mtp.gguf.reader`). What a path is, is decided by its content (`gguf.formats.model_format`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..gguf.formats import HF_DIR, is_gguf, model_format
from ..gguf.keys import LAYOUT_BY_ARCH, K
from ..gguf.reader import read_metadata
from .core import SPACE, IncrementalDecoder, Tokenizer
from .from_gguf import tokenizer_from_gguf_metadata
from .from_hf import tokenizer_from_hf_dir

__all__ = [
    "SPACE",
    "Tokenizer",
    "IncrementalDecoder",
    "load_tokenizer",
    "tokenizer_from_gguf_metadata",
    "tokenizer_from_hf_dir",
    "read_gguf_metadata",
]


def read_gguf_metadata(path: str | Path, *, prefix: str | tuple[str, ...] = "") -> dict[str, Any]:
    """GGUF metadata values whose keys start with `prefix` (`gguf.reader.read_metadata`)."""
    return read_metadata(path, prefix=prefix)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model: a GGUF file, a HF directory, or a ``tokenizer.json`` file.

    An MTP assistant (drafter) GGUF without a tokenizer (the usual case) is named as such by its
    ``general.architecture``: passed where a target belongs, it needs another fix than a missing
    tokenizer. A drafter that embeds one gives it (`api.load` then refuses it as a target)."""
    path = Path(path)
    if path.name == "tokenizer.json" and path.is_file() and not is_gguf(path):
        return tokenizer_from_hf_dir(path.parent)
    if model_format(path) == HF_DIR:
        return tokenizer_from_hf_dir(path)
    metadata = read_metadata(path, prefix=(K.ARCHITECTURE, "tokenizer."))
    arch = metadata.get(K.ARCHITECTURE)
    if arch in LAYOUT_BY_ARCH and "tokenizer.ggml.model" not in metadata:
        raise ModelFormatError(
            f"{path}: this file is an MTP assistant (drafter, general.architecture {arch!r}) and carries "
            "no tokenizer; it is not a target model: pass it with -md/--model-draft and give its "
            "target model with -m/--model"
        )
    return tokenizer_from_gguf_metadata(metadata, source=str(path))
