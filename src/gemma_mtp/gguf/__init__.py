"""The GGUF file format: name and key tables, metadata <-> config, reading, writing, codecs, the
tokenizer metadata of a checkpoint, and format detection. The tools built on it (convert,
quantize, sanitize, inspect, diff, pair) live in `gemma_mtp.tools`."""

from __future__ import annotations

from .formats import model_format
from .metadata import config_from_gguf
from .reader import GGUFFile, open_gguf, read_metadata

__all__ = ["GGUFFile", "config_from_gguf", "model_format", "open_gguf", "read_metadata"]
