"""Our compiled CPU module (`csrc/`: the q8 and GGUF-block matmuls, the fused norm / rotary /
attention / argmax ops and the native layer blocks), built once per machine.

``gemma-mtp build-kernels`` builds it ahead (``make demo`` and ``make test`` run it first); else the
first process that needs it builds it, saying so on stderr (a minute or two on 2 cores). The cache
and its locking are `native.build`'s. Without a compiler, after a failed build, or with
``GEMMA_MTP_NATIVE=0``, `module()` returns None and `why_unavailable()` says why; the first time
that happens in a process one warning on stderr announces the slower torch fallback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from .build import BuildError, Extension, Progress

__all__ = ["EXTENSION", "module", "why_unavailable", "build", "reset", "BuildError"]

CSRC = Path(__file__).with_name("csrc")
EXTENSION = Extension(
    name="gemma_mtp_native",
    sources=tuple(CSRC / name for name in ("q8_mm.cpp", "gguf_mm.cpp", "half_mm.cpp", "layer.cpp")),
    headers=tuple(
        CSRC / name
        for name in (
            "common.h",
            "gguf_blocks.h",
            "gguf_k256.h",
            "gguf_lowbit.h",
            "gguf_x8.h",
            "iq_tables.h",
        )
    ),
    cflags=("-O3", "-march=native", "-fopenmp"),
    ldflags=("-fopenmp",),
)

_state: dict[str, object] = {}


def _stderr(line: str) -> None:
    print(f"gemma-mtp: native kernels: {line}", file=sys.stderr, flush=True)


def build(progress: Progress | None = _stderr) -> bool:
    """Build the module unless this machine has it; True when this call compiled it.
    Raises `BuildError` with the compiler's output when the build fails."""
    return EXTENSION.ensure(progress)


def module() -> ModuleType | None:
    """The compiled module, or None when it cannot be had here (`why_unavailable` says why)."""
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    found: ModuleType | None = None
    if os.environ.get("GEMMA_MTP_NATIVE", "1") == "0":
        _state["why"] = "disabled by GEMMA_MTP_NATIVE=0"
    else:
        try:
            if not EXTENSION.is_built():
                _stderr(
                    "not built for this machine yet: building them now, once "
                    "(`gemma-mtp build-kernels` does this ahead of time)"
                )
            found = EXTENSION.load(_stderr)
        except BuildError as exc:
            _state["why"] = "the build failed"
            _stderr(f"the build failed; the compiler said:\n{exc}")
        except (OSError, ImportError) as exc:
            _state["why"] = f"cannot load {EXTENSION.library()} ({type(exc).__name__}: {exc})"
    _state["module"] = found
    if found is None:
        _stderr(
            f"unavailable ({_state['why']}); using torch's kernels instead: slower, and quantized "
            "weights are unpacked (`gemma-mtp build-kernels` retries the build and shows why it fails)"
        )
    return found


def why_unavailable() -> str | None:
    """None when the module is available, else the reason."""
    return None if module() is not None else str(_state.get("why"))


def reset() -> None:
    """Forget this process's answer (tests toggle ``GEMMA_MTP_NATIVE``); the build stays cached."""
    _state.clear()
