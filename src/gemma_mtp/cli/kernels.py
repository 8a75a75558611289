"""``gemma-mtp build-kernels``: build (or find) the native CPU kernels for this machine, loudly.

``make demo`` and ``make test`` run it before anything else, so that no later command pays the
one-time build silently. Progress goes to stderr; a failed build prints the compiler's output and
exits 1.
"""

from __future__ import annotations

import argparse
import sys

from gemma_mtp.errors import GemmaMTPError

__all__ = ["add_build_kernels_arguments", "build_kernels_command"]


def add_build_kernels_arguments(subparsers) -> None:  # noqa: ANN001 (argparse's private type)
    subparsers.add_parser(
        "build-kernels",
        help="build the native CPU kernels for this machine (once; later loads reuse them)",
        description="Build the native CPU kernels into the cache ($GEMMA_MTP_CACHE or "
        "~/.cache/gemma-mtp/kernels/KEY), or report the build that is already there. Safe to run "
        "while other gemma-mtp processes build or use them.",
        allow_abbrev=False,
    )


def build_kernels_command(args: argparse.Namespace) -> int:
    from gemma_mtp import native

    try:
        built = native.build()
    except native.BuildError as exc:
        print(f"gemma-mtp: native kernels: the build failed; the compiler said:\n{exc}", file=sys.stderr)
        raise GemmaMTPError(
            "could not build the native CPU kernels (the compiler's output is above): install a C++ "
            "compiler and the Python headers (Debian: apt install g++ python3-dev), or run with "
            "GEMMA_MTP_NATIVE=0 to use torch's slower kernels"
        ) from None
    what = "built" if built else "already built, nothing to do"
    print(f"gemma-mtp: native kernels: {what}: {native.EXTENSION.library()}", file=sys.stderr)
    return 0
