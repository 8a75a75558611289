"""Permission problems for tests that may run as root (where chmod denies nothing): `deny` makes
every open, create and listing under the given paths fail as the OS would for another user."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pytest

__all__ = ["deny"]


def deny(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    denied = [Path(p).absolute() for p in paths]

    def blocked(file) -> bool:
        if isinstance(file, int):  # an already open descriptor
            return False
        target = Path(os.fsdecode(file)).absolute()
        return any(target == d or d in target.parents for d in denied)

    def refuse(file):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))

    real_open, real_os_open, real_scandir, real_access = builtins.open, os.open, os.scandir, os.access

    def fake_open(file, *args, **kwargs):
        return refuse(file) if blocked(file) else real_open(file, *args, **kwargs)

    def fake_os_open(file, *args, **kwargs):
        return refuse(file) if blocked(file) else real_os_open(file, *args, **kwargs)

    def fake_scandir(file="."):
        return refuse(file) if blocked(file) else real_scandir(file)

    def fake_access(file, mode, *args, **kwargs):
        return False if blocked(file) else real_access(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    monkeypatch.setattr(os, "access", fake_access)
