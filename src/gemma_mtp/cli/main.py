"""Entry point of the ``gemma-mtp`` command: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from gemma_mtp import __version__
from gemma_mtp.bench.cli import add_bench_arguments, bench_command
from gemma_mtp.calibrate.cli import add_imatrix_arguments, imatrix_command
from gemma_mtp.cli.args import add_chat_arguments, add_run_arguments
from gemma_mtp.cli.chat import chat_command
from gemma_mtp.cli.kernels import add_build_kernels_arguments, build_kernels_command
from gemma_mtp.cli.media_args import add_media_arguments
from gemma_mtp.cli.run import run_command
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.server.cli import add_serve_arguments, serve_command
from gemma_mtp.tools.cli import GGUF_COMMANDS, add_gguf_commands
from gemma_mtp.train.cli import add_train_arguments, train_command

__all__ = ["main", "build_parser", "PLANNED_COMMANDS"]

# Registered so that `gemma-mtp --help` shows the whole surface; each says it is not there yet.
PLANNED_COMMANDS: tuple[str, ...] = ()
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run_command,
    "chat": chat_command,
    "serve": serve_command,
    "bench": bench_command,
    "train-drafter": train_command,
    "build-kernels": build_kernels_command,
    "imatrix": imatrix_command,
    **GGUF_COMMANDS,
}


class _Parser(argparse.ArgumentParser):
    """argparse without the usage block on errors: one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gemma-mtp", description="Gemma with multi-token-prediction drafters.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="one generation", description="One generation.", allow_abbrev=False)
    add_run_arguments(run)
    add_media_arguments(run)
    chat = commands.add_parser(
        "chat",
        help="interactive chat with the model's template",
        description="Interactive chat: one line is one message; /image PATH and /audio PATH (a WAV clip) "
        "go with the next one, /reset clears the history, /exit quits.",
        allow_abbrev=False,
    )
    add_chat_arguments(chat)
    add_gguf_commands(commands)
    add_serve_arguments(commands)
    add_bench_arguments(commands)
    add_train_arguments(commands)
    add_imatrix_arguments(commands)
    add_build_kernels_arguments(commands)
    for name in PLANNED_COMMANDS:
        commands.add_parser(name, help="(not available in this version yet)", allow_abbrev=False)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        # parse_known_args lets planned commands take any flags and still say they are not there yet.
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command in COMMANDS:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)

    command = COMMANDS.get(args.command)
    if command is None:
        print(f"error: 'gemma-mtp {args.command}' is not available in this version yet", file=sys.stderr)
        return 2
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        if isinstance(exc, GemmaMTPError):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return exc.exit_code
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
