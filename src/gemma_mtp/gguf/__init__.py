"""GGUF files: name and key tables, metadata <-> config, reading, writing and conversions."""

from __future__ import annotations

from .convert import LAYOUTS, convert_drafter_layout, convert_hf_to_gguf
from .metadata import config_from_gguf
from .reader import GGUFFile, open_gguf

__all__ = [
    "LAYOUTS",
    "GGUFFile",
    "config_from_gguf",
    "convert_drafter_layout",
    "convert_hf_to_gguf",
    "open_gguf",
]
