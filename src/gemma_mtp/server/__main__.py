"""``python -m gemma_mtp.server``: the ``serve`` subcommand on its own."""

from __future__ import annotations

import argparse
import sys

from ..errors import GemmaMTPError
from .cli import add_serve_options, serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma_mtp.server", allow_abbrev=False)
    add_serve_options(parser)
    args = parser.parse_args(argv)
    try:
        return serve_command(args)
    except KeyboardInterrupt:
        return 130
    except GemmaMTPError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
