"""Our compiled CPU kernel (`csrc/q8_mm.cpp`), built on first use with torch's C++ extension
builder and cached per machine.

The build needs a C++ compiler and the Python headers (a few tens of seconds, once; the result
lives under `~/.cache/gemma-mtp/kernels/<hash>`, keyed by the source, torch version and CPU flags,
so a machine never loads a build made for another CPU). Without a compiler, or with
`GEMMA_MTP_NATIVE=0`, `q8_module()` returns None and `why_unavailable()` says why: the loader then
falls back to torch's weight-only kernels and says so in its notices.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["q8_module", "why_unavailable", "build_dir", "fast_cpu_ops"]

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("q8_mm.cpp", "gguf_mm.cpp", "layer.cpp")]
HEADERS = [CSRC / "common.h"]
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]

_failure: str | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_dir() -> Path:
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in SOURCES + HEADERS),
        torch.__version__.encode(),
        " ".join(CFLAGS).encode(),
        _cpu_flags().encode(),
    ):
        key.update(part)
    root = Path(os.environ.get("GEMMA_MTP_CACHE", Path.home() / ".cache" / "gemma-mtp"))
    return root / "kernels" / key.hexdigest()[:16]


@functools.cache
def q8_module() -> ModuleType | None:
    """The compiled module (`q8_mm`, `gguf_mm`, `gguf_rows`, the fused ops), or None when it cannot be built here."""
    global _failure
    if os.environ.get("GEMMA_MTP_NATIVE", "1") == "0":
        _failure = "disabled by GEMMA_MTP_NATIVE=0"
        return None
    try:
        from torch.utils.cpp_extension import load

        if shutil.which("ninja") is None:  # the `ninja` wheel sits beside this interpreter
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        where = build_dir()
        where.mkdir(parents=True, exist_ok=True)
        return load(
            name="gemma_mtp_q8",
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(where),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no headers, no ninja: fall back, and say why
        first = str(exc).strip().splitlines()
        _failure = f"could not build the native q8 kernel ({type(exc).__name__}: {first[0] if first else ''})"
        return None


def why_unavailable() -> str | None:
    """None when the kernel is available, else the reason."""
    return None if q8_module() is not None else _failure


def fast_cpu_ops(*tensors: torch.Tensor | None) -> ModuleType | None:
    """The compiled module when every tensor given is a float32 CPU tensor outside autograd (the
    fused norm / rotary ops are inference-only), else None: the caller takes the torch path."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or (grad and t.requires_grad)):
            return None
    return q8_module()
