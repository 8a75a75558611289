"""Atomic output files: every writer writes a temp file in the destination's folder and renames it
onto the destination, so a reader never sees half a file and a crash leaves the old one intact.

Modes follow what an ordinary file write gives (llama.cpp's ``fopen``): a new file gets
``0o666 & ~umask``; replacing an existing file (``sanitize --in-place``, or writing over an old
output) keeps that file's mode. A missing output folder is an error, never created silently.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import GemmaMTPError
from .formats import access_error

__all__ = ["atomic_write", "check_output_dir", "current_umask", "new_file_mode"]

NEW_FILE_MODE = 0o666  # what open(..., "w") asks the OS for before the umask


def current_umask() -> int:
    """The process umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it: set and restore at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return NEW_FILE_MODE & ~current_umask()


def check_output_dir(path: str | Path) -> Path:
    """The folder `path` is to be written into; an error naming it when it is missing, not a folder
    or not writable."""
    parent = Path(path).absolute().parent
    if not parent.exists():
        raise GemmaMTPError(
            f"{path}: the output folder {parent} does not exist; create it first (mkdir -p {parent}) "
            "or choose another output path"
        )
    if not parent.is_dir():
        raise GemmaMTPError(f"{path}: {parent} is not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise access_error(parent, PermissionError(errno.EACCES, "Permission denied"), "write in")
    return parent


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temp file beside `path` for the block to write; renamed onto `path` (with the mode above)
    when the block succeeds, removed when it fails."""
    path = Path(path)
    parent = check_output_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise access_error(parent, exc, "write in") from None
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file keeps its mode
        except FileNotFoundError:
            mode = new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
