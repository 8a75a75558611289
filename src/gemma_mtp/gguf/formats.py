"""What a model path is, decided in one place by its content (never by its file name): a GGUF file
starts with the magic bytes ``GGUF``; a Hugging Face checkpoint is a directory. Anything else, and
any path that cannot be read, is one clear error naming the path and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import GemmaMTPError, ModelFormatError

__all__ = ["GGUF", "HF_DIR", "GGUF_MAGIC", "is_gguf", "model_format", "access_error", "check_readable"]

GGUF = "gguf"
HF_DIR = "hf-dir"
GGUF_MAGIC = b"GGUF"


def access_error(path: str | Path, exc: OSError, action: str = "read") -> GemmaMTPError:
    """One sentence for an OSError on `path` (no raw ``[Errno 13]`` text): what failed and the fix."""
    path = Path(path)
    what = "folder" if path.is_dir() else "file"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return GemmaMTPError(
            f"{path}: permission denied: cannot {action} this {what}; check its permissions "
            f"(ls -l {path}) or use a {what} you can {action}"
        )
    if isinstance(exc, FileNotFoundError):
        return ModelFormatError(f"{path}: no such file or directory")
    reason = exc.strerror or type(exc).__name__
    return GemmaMTPError(f"{path}: cannot {action} this {what}: {reason.lower()}")


def check_readable(path: str | Path) -> Path:
    """`path` if it is a file this process can open for reading; else one clear error."""
    try:
        with open(path, "rb"):
            return Path(path)
    except OSError as exc:
        raise access_error(path, exc) from None


def is_gguf(path: str | Path) -> bool:
    """True when `path` is a file that starts with the GGUF magic bytes (whatever it is named).
    A missing path or a directory is False; a file that cannot be read is a clear error."""
    try:
        with open(path, "rb") as file:
            return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    except OSError as exc:
        raise access_error(path, exc) from None


def model_format(path: str | Path) -> str:
    """``"gguf"`` for a GGUF file, ``"hf-dir"`` for a (readable) directory; otherwise one error
    saying what the path is and what is expected. The only place the format of a path is decided."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise access_error(path, exc) from None
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            raise access_error(path, exc) from None
        return HF_DIR
    if is_gguf(path):
        return GGUF
    raise ModelFormatError(
        f"{path}: not a GGUF file (it does not start with the GGUF magic bytes) and not a model "
        "directory; pass a .gguf file, or the Hugging Face model directory (with config.json) itself"
    )
