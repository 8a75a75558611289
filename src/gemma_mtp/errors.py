"""User-facing errors: one line naming the file, tensor, key or flag at fault and the fix."""

from __future__ import annotations

__all__ = ["GemmaMTPError", "ModelFormatError", "ContextOverflowError", "UsageError"]


class GemmaMTPError(Exception):
    """Every user-facing failure; the CLI prints ``error: <message>`` and exits 1."""

    exit_code = 1


class ModelFormatError(GemmaMTPError):
    """A config or weights file does not match what the loader expects."""


class ContextOverflowError(GemmaMTPError):
    """The prompt plus the requested tokens do not fit in the context."""


class UsageError(GemmaMTPError):
    """A bad option value or combination; the CLI exits 2 as for argparse errors."""

    exit_code = 2
