"""`gemma-mtp imatrix`: llama-imatrix's flags, one call to `make_imatrix`, a one-line summary.

    gemma-mtp imatrix -m TARGET -f TEXT [-o imatrix.gguf] [-c 512] [--chunks N]
    gemma-mtp imatrix -m TARGET -md DRAFTER --bench-prompts [--spec-draft-n-max 3]

With -md the drafter is calibrated, its target (-m) in the loop; without, the target.
"""

from __future__ import annotations

import argparse
import sys

from ..cli.model_args import (
    add_device_arguments,
    add_draft_argument,
    add_model_argument,
    add_quant_arguments,
    add_threads_argument,
    load_options_from_args,
)
from ..engine.options import LoadOptions
from ..errors import UsageError
from .options import IMATRIX_DEFAULTS, ImatrixOptions

__all__ = ["add_imatrix_arguments", "imatrix_command"]

DEFAULT_OUTPUT = "imatrix.gguf"  # llama-imatrix's


def add_imatrix_arguments(subparsers) -> argparse.ArgumentParser:
    """Add the `imatrix` subcommand; returns its parser."""
    d = IMATRIX_DEFAULTS
    p = subparsers.add_parser(
        "imatrix",
        help="importance matrix of a target, or of a drafter with its target in the loop",
        description="Compute an importance matrix (llama.cpp's GGUF imatrix format, for "
        "llama-quantize --imatrix and gemma-mtp quantize --imatrix) over a text: of the target, or "
        "with -md of the MTP drafter, which drafts at every position on the target's states.",
        allow_abbrev=False,
    )
    load = LoadOptions()
    models = p.add_argument_group("models")
    add_model_argument(models, load, help="target: HF directory or .gguf (required)")
    add_draft_argument(models, load, help="MTP drafter to calibrate (its target is -m)")
    add_device_arguments(models, load)
    add_threads_argument(models)
    add_quant_arguments(p, load)
    text = p.add_argument_group("calibration text").add_mutually_exclusive_group(required=True)
    text.add_argument("-f", "--file", metavar="FILE", help="calibration text file")
    text.add_argument(
        "--bench-prompts", action="store_true", help="the bench harness's built-in prompts as the text"
    )
    group = p.add_argument_group("imatrix (llama-imatrix's flags and defaults)")
    group.add_argument(
        "-o", "--output", "--output-file", dest="output", default=DEFAULT_OUTPUT, metavar="FILE",
        help="imatrix file to write (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "-c", "--ctx-size", dest="chunk_size", type=int, default=d.chunk_size, metavar="N",
        help="tokens per chunk, each starting with BOS (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--chunks", type=int, default=-1, metavar="N", help="at most N chunks (default: -1, all)"
    )
    group.add_argument(
        "--process-output", action="store_true",
        help="also a separate output head (output.weight); a tied head (token_embd.weight, as in "
        "Gemma) is never recorded, as in llama-imatrix",
    )  # fmt: skip
    group.add_argument(
        "-ofreq", "--output-frequency", dest="output_frequency", type=int, default=d.output_frequency,
        metavar="N", help="write the file every N chunks (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--parse-special", action="store_true", help="tokenize special-token text as special tokens"
    )
    group.add_argument(
        "--spec-draft-n-max", dest="n_draft", type=int, default=d.n_draft, metavar="N",
        help="drafter: draft steps at each position, as a speculative round (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    return p


def imatrix_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .job import bench_text, make_imatrix, read_text

    if args.chunks < -1 or args.chunks == 0:
        raise UsageError(f"--chunks {args.chunks}: give N >= 1, or -1 for all")
    options = ImatrixOptions(
        chunk_size=args.chunk_size,
        max_chunks=None if args.chunks == -1 else args.chunks,
        n_draft=args.n_draft,
        process_output=args.process_output,
        output_frequency=args.output_frequency,
    )
    source = bench_text() if args.bench_prompts else read_text(args.file)
    load = load_options_from_args(args, ctx_size=max(options.chunk_size, 2))
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="imatrix", unit="chunk", file=sys.stderr)
        bar.update(done - bar.n)

    def notice(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        result = make_imatrix(
            load,
            source,
            args.output,
            options=options,
            parse_special=args.parse_special,
            progress=None if args.quiet else progress,
            notice=None if args.quiet else notice,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"wrote {result.path}: {result.n_entries} entries of the {result.calibrated}, "
        f"{result.n_chunks} chunks of {options.chunk_size} tokens ({result.n_tokens} tokens in the text)"
    )
    return 0
