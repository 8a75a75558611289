"""gemma-mtp: Gemma with multi-token-prediction drafters, in PyTorch.

``load``, ``Engine`` and ``Result`` are imported lazily from ``gemma_mtp.api`` so that importing
the package stays cheap (no torch-heavy modules) and works before the engine is needed.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from gemma_mtp import threads as _threads
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.lazy import lazy_getattr

if TYPE_CHECKING:
    from gemma_mtp.api import Engine, Result, load
    from gemma_mtp.sampling import SamplingParams

__all__ = ["load", "Engine", "Result", "SamplingParams", "GemmaMTPError", "__version__"]

_threads.openmp_wait_policy()  # before torch (and its OpenMP runtime) loads; see threads.py

try:
    __version__ = version("gemma-mtp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_LAZY = {"load": "gemma_mtp.api", "Engine": "gemma_mtp.api", "Result": "gemma_mtp.api"}
_LAZY["SamplingParams"] = "gemma_mtp.sampling"


__getattr__ = lazy_getattr("gemma_mtp", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
