"""Building and caching a compiled extension: keyed by its contents, built once, safe under concurrency.

A build is keyed by everything that decides its binary: the source and header bytes, torch's
version, the Python ABI, the machine, the compiler flags and the CPU's flags. The key names a
directory under ``$GEMMA_MTP_CACHE/kernels`` (default ``~/.cache/gemma-mtp``) holding one finished
library. Nothing outside the key is part of the result: the sources are copied into a private
build directory, compiled there with the C++ compiler and torch's include and library paths (one
compiler per core), and a finished library is loaded straight from its file, with no build tool
asked whether it is up to date. So every checkout and every virtual environment of the
same sources and torch shares one build, and loading an existing build never recompiles.

Concurrent first use is safe: builders take an exclusive ``flock`` on the key's directory, the
library is compiled in a private temporary directory and renamed into place, and a process that
finds the lock held waits for it (and says so) instead of compiling the same thing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["Extension", "BuildError", "cache_root", "cpu_flags"]

Progress = Callable[[str], None]
# How a library is compiled and linked (`Extension._compile`); part of the key, so that a change of
# recipe never reuses a library made by an older one.
RECIPE = "2: c++ per source in parallel, torch include/library paths, -std=c++20"


class BuildError(RuntimeError):
    """The compiler (or the build tool) failed; the message carries its output."""


def cache_root() -> Path:
    return Path(os.environ.get("GEMMA_MTP_CACHE", Path.home() / ".cache" / "gemma-mtp"))


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@dataclass(frozen=True)
class Extension:
    """A torch C++ extension module ``name`` made of ``sources`` (plus ``headers`` they include)."""

    name: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...] = ()
    cflags: tuple[str, ...] = ("-O3",)
    ldflags: tuple[str, ...] = ()
    _loaded: dict = field(default_factory=dict, compare=False, repr=False)

    def key(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.sources + self.headers, key=lambda p: p.name):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        for part in (
            RECIPE,
            self.name,
            torch.__version__,
            sys.implementation.cache_tag or "",
            platform.machine(),
            " ".join(self.cflags),
            " ".join(self.ldflags),
            cpu_flags(),
        ):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()[:16]

    def directory(self) -> Path:
        return cache_root() / "kernels" / self.key()

    def library(self) -> Path:
        return self.directory() / f"{self.name}.so"

    def is_built(self) -> bool:
        return self.library().is_file()

    def ensure(self, progress: Progress | None = None) -> bool:
        """Build the library unless it exists; True when this call compiled it."""
        if self.is_built():
            return False
        where = self.directory()
        where.mkdir(parents=True, exist_ok=True)
        with _exclusive(where / "build.lock", progress):
            if self.is_built():  # another process finished it while we waited
                return False
            self._compile(where, progress)
        return True

    def load(self, progress: Progress | None = None) -> ModuleType:
        """The module, compiled first if this machine has no build of these sources yet."""
        module = self._loaded.get("module")
        if module is None:
            self.ensure(progress)
            module = _import(self.name, self.library())
            self._loaded["module"] = module
        return module

    def _compile(self, where: Path, progress: Progress | None) -> None:
        """Compile the sources (in parallel, one compiler per core) and link them, with torch's
        include and library paths, in a private directory; rename the library into place."""
        start = time.perf_counter()
        if progress:
            progress(f"compiling {len(self.sources)} C++ sources into {self.library()}")
        with tempfile.TemporaryDirectory(dir=where, prefix="build-") as tmp:
            src = Path(tmp) / "src"
            src.mkdir()
            for path in self.sources + self.headers:
                shutil.copyfile(path, src / path.name)
            objects = [Path(tmp) / f"{path.stem}.o" for path in self.sources]
            _run_all(
                [
                    [*_compiler(), *self._compile_flags(), "-c", str(src / path.name), "-o", str(obj)]
                    for path, obj in zip(self.sources, objects, strict=True)
                ]
            )
            built = Path(tmp) / f"{self.name}.so"
            _run_all([[*_compiler(), "-shared", *map(str, objects), *self._link_flags(), "-o", str(built)]])
            os.replace(built, self.library())  # atomic: readers see no library or a whole one
        if progress:
            progress(f"built in {time.perf_counter() - start:.0f} s")

    def _compile_flags(self) -> list[str]:
        from torch.utils.cpp_extension import include_paths

        includes = [*include_paths(), sysconfig.get_paths()["include"]]
        return [
            f"-DTORCH_EXTENSION_NAME={self.name}",
            "-DTORCH_API_INCLUDE_EXTENSION_H",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *(f"-isystem{path}" for path in includes),
            "-fPIC",
            "-std=c++20",
            *self.cflags,
        ]

    def _link_flags(self) -> list[str]:
        from torch.utils.cpp_extension import library_paths

        libs = [f"-L{path}" for path in library_paths()]
        return [*self.ldflags, *libs, "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python"]


def _compiler() -> list[str]:
    return [os.environ.get("CXX", "c++")]


def _run_all(commands: list[list[str]]) -> None:
    """Run the commands, as many at once as there are cores; a failure raises with its output."""
    pending, running, failures = list(commands), [], []
    limit = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    while pending or running:
        while pending and len(running) < limit:
            command = pending.pop(0)
            try:
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            except OSError as exc:
                raise BuildError(
                    f"cannot run the C++ compiler {command[0]!r}: {exc.strerror or exc}"
                ) from None
            running.append((command, proc))
        command, proc = running.pop(0)
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"$ {' '.join(command)}\n{output.strip()}")
    if failures:
        raise BuildError("\n".join(failures))


@contextlib.contextmanager
def _exclusive(path: Path, progress: Progress | None) -> Iterator[None]:
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(f"waiting for another process that is building this library (lock {path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import(name: str, path: Path) -> ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"{path}: not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
