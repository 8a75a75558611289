"""The ``gemma-mtp`` command line: thin subcommands that parse, call the library, and format."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from gemma_mtp.cli.main import main as _main

    return _main(argv)
