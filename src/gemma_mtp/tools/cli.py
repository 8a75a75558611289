"""The GGUF tool commands of ``gemma-mtp``: convert, quantize, sanitize, inspect, diff, pair.

Each command parses, calls one library function (tools.convert / quantize / sanitize / inspect /
diff / pair) and formats its result. Registered by ``gemma_mtp.cli.main`` through ``add_gguf_commands``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..gguf.formats import HF_DIR, model_format
from ..gguf.keys import DEFAULT_LAYOUT, DRAFTER_LAYOUTS
from ..gguf.reader import open_gguf
from ..gguf.writer import DEFAULT_OUT_TYPE, OUT_TYPES
from .diff import diff_gguf
from .inspect import inspect_gguf
from .pair import pair_gguf
from .paths import check_output
from .quantize import FILE_TYPES, quantize_gguf
from .sanitize import sanitize_gguf

__all__ = ["GGUF_COMMANDS", "add_gguf_commands"]

Command = Callable[[argparse.Namespace], int]
# convert's defaults, shown in --help (one source: gguf.keys / gguf.writer, which convert uses too)
_CONVERT_DEFAULTS = {"layout": DEFAULT_LAYOUT, "out_type": DEFAULT_OUT_TYPE}
LAYOUTS = tuple(DRAFTER_LAYOUTS)


def _out(line: str = "") -> None:
    print(line, flush=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str), flush=True)


# ------------------------------------------------------------------------------------- convert


def convert_command(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    notices: list[str] = []
    if model_format(src) == HF_DIR:  # a GGUF file, or one error saying what src is
        if args.centroids_from:
            raise UsageError("--centroids-from applies to a drafter .gguf; a checkpoint keeps its own head")
        kwargs = {"out_type": args.outtype.upper()} if args.outtype else {}
        if args.mmproj:  # llama.cpp's converter flag: the media towers only, as its mmproj file
            from ..weights.mmproj import write_mmproj

            path = write_mmproj(src, check_output(src, out), **kwargs)
            gf = open_gguf(path)
            _out(f"wrote {path} (mmproj, {len(gf.tensors)} tensors, {_size(path.stat().st_size)})")
            return 0
        from .convert import convert_hf_to_gguf  # torch (safetensors reading): only when converting

        path = convert_hf_to_gguf(
            src, out, layout=args.layout, keep_centroids=args.keep_centroids, notices=notices, **kwargs
        )
    else:
        if args.outtype:
            raise UsageError(
                "--outtype applies to Hugging Face checkpoints; use gemma-mtp quantize for a GGUF"
            )
        from .convert import convert_drafter_layout

        path = convert_drafter_layout(
            src,
            out,
            args.layout,
            keep_centroids=args.keep_centroids,
            centroids_from=args.centroids_from,
            notices=notices,
        )
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr, flush=True)
    gf = open_gguf(path)
    _out(f"wrote {path} ({gf.arch}, {len(gf.tensors)} tensors, {_size(path.stat().st_size)})")
    return 0


# ------------------------------------------------------------------------------------- quantize


class _Bar:
    """A tqdm bar on stderr (only on a terminal), fed by quantize_gguf's progress callback."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="w",
                unit_scale=True,
                desc="quantizing",
                file=sys.stderr,
                leave=False,
                disable=None,
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def quantize_command(args: argparse.Namespace) -> int:
    bar = _Bar()
    try:
        result = quantize_gguf(
            args.input,
            args.output,
            args.type,
            imatrix=args.imatrix,
            allow_low_bit_drafter=args.allow_low_bit_drafter,
            allow_requantize=args.allow_requantize,
            progress=bar,
        )
    finally:
        bar.close()
    for key, why in result.removed_keys:
        _out(f"removed {key} ({why})")
    counts: dict[str, int] = {}
    for qtype in result.types.values():
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    _out(f"tensor types: {', '.join(f'{n} {t}' for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))}")
    if result.fallbacks:
        _out(f"{len(result.fallbacks)} tensors took a fallback type (rows do not fit 256-value blocks)")
    if args.imatrix:
        _out(f"imatrix: {result.imatrix_entries} entries from {args.imatrix}")
    for name in result.without_imatrix:  # llama-quantize's "did not find weights for ..."
        print(f"notice: no imatrix entry for {name}; quantized without importance weights", file=sys.stderr)
    _out(
        f"wrote {result.path} ({result.file_type.name}): {_size(result.bytes_in)} -> {_size(result.bytes_out)}"
    )
    return 0


# ------------------------------------------------------------------------------------- sanitize


def sanitize_command(args: argparse.Namespace) -> int:
    if args.check and (args.output or args.in_place):
        raise UsageError("--check changes nothing; drop OUT and --in-place")
    if not args.check and args.output and args.in_place:
        raise UsageError("give OUT or --in-place, not both")
    result = sanitize_gguf(
        args.input, args.output, in_place=args.in_place, check=args.check, any_arch=args.any_arch
    )
    verb = "found" if args.check else "removed"
    for leak in result.removed:
        _out(f"{verb} {leak.key} = {leak.value!r} ({leak.why})")
    if args.check:
        _out(
            f"{len(result.removed)} leaking keys in {args.input}"
            if result.removed
            else f"no leaks in {args.input}"
        )
        return 1 if result.removed else 0
    if result.path is None:
        _out(f"no leaks in {args.input}; nothing changed")
    else:
        _out(f"wrote {result.path} (kv_count {result.kv_count_before} -> {result.kv_count_after})")
    return 0


# ------------------------------------------------------------------------------------- inspect / diff / pair


def _inspect_text(info: dict[str, Any], show_tensors: bool) -> None:
    _out(f"file          {info['file']} ({_size(info['size_bytes'])})")
    layout = f", {info['layout']} layout" if info["layout"] else ""
    _out(f"architecture  {info['architecture']} ({info['kind']}{layout})")
    if info["file_type"]:
        _out(f"file type     {info['file_type']} (quantization version {info['quantization_version']})")
    tok = info["tokenizer"]
    if tok:
        template = "with" if tok["chat_template"] else "no"
        _out(f"tokenizer     {tok['model']}, {tok['tokens']} tokens, {template} chat template")
    else:
        _out("tokenizer     none")
    if info["hyperparameters"]:
        _out("hyperparameters")
        for key, value in info["hyperparameters"].items():
            _out(f"  {key:<26}{value}")
    for notice in info["notices"]:
        _out(f"notice: {notice}")
    t = info["tensors"]
    bpw = f", {t['bits_per_weight']} bits per weight" if t["bits_per_weight"] else ""
    _out(f"tensors       {t['count']} tensors, {_count(t['parameters'])} weights, {_size(t['bytes'])}{bpw}")
    for name, e in t["by_type"].items():
        _out(
            f"  {name:<8}{e['count']:>5} tensors {_count(e['parameters']):>8} weights {_size(e['bytes']):>11}"
        )
    if show_tensors:
        for row in t["list"]:
            _out(f"  {row['name']:<44}{row['type']:<6}{str(row['shape']):<20}{_size(row['bytes'])}")
    if not info["leaks"]:
        _out("leaks         none")
    for leak in info["leaks"]:
        _out(f"leak          {leak['key']} = {leak['value']!r} ({leak['why']}); run gemma-mtp sanitize")


def inspect_command(args: argparse.Namespace) -> int:
    info = inspect_gguf(args.file)
    if args.json:
        _print_json(info)
    else:
        _inspect_text(info, args.tensors)
    return 0


def diff_command(args: argparse.Namespace) -> int:
    diff = diff_gguf(args.a, args.b)
    if args.json:
        _print_json(diff)
        return 0
    _out(f"A: {diff['a']}")
    _out(f"B: {diff['b']}")
    for section, label in (("metadata", "key"), ("tensors", "name")):
        d = diff[section]
        if not (d["only_in_a"] or d["only_in_b"] or d["different"]):
            _out(f"{section}: identical")
            continue
        _out(f"{section}:")
        for row in d["only_in_a"]:
            _out(f"  only in A  {row[label]} = {row['a']}")
        for row in d["only_in_b"]:
            _out(f"  only in B  {row[label]} = {row['b']}")
        for row in d["different"]:
            _out(f"  different  {row[label]}: A {row['a']} | B {row['b']}")
    return 0


def pair_command(args: argparse.Namespace) -> int:
    report = pair_gguf(args.target, args.draft)
    if args.json:
        _print_json(report.to_dict())
    else:
        for check in report.checks:
            mark = {True: "ok  ", False: "FAIL", None: "note"}[check.ok]
            _out(f"{mark}  {check.name:<29}{check.detail}")
        for warning in report.warnings:
            _out(f"warning: {warning}")
        _out(report.verdict)
    return 0 if report.compatible else 1


# ------------------------------------------------------------------------------------- registration

GGUF_COMMANDS: dict[str, Command] = {
    "convert": convert_command,
    "quantize": quantize_command,
    "sanitize": sanitize_command,
    "inspect": inspect_command,
    "diff": diff_command,
    "pair": pair_command,
}


def _add(subparsers: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=description, allow_abbrev=False)


def add_gguf_commands(subparsers: Any) -> None:
    """Add the six GGUF subcommands to `gemma-mtp`'s subparsers (handlers: GGUF_COMMANDS)."""
    p = _add(subparsers, "convert", "HF checkpoint -> GGUF, or a drafter GGUF -> another layout",
             "Convert a Hugging Face target or assistant directory to GGUF, or a drafter GGUF to another layout.")  # fmt: skip
    p.add_argument("src", help="HF model directory, or a drafter .gguf")
    p.add_argument("out", help="output .gguf")
    p.add_argument("--layout", choices=LAYOUTS, default=_CONVERT_DEFAULTS["layout"],
                   help="drafter layout (default %(default)s)")  # fmt: skip
    p.add_argument("--outtype", "--out-type", type=str.lower, choices=[t.lower() for t in OUT_TYPES],
                   help=f"matrix type for HF conversion (default {_CONVERT_DEFAULTS['out_type'].lower()})")  # fmt: skip
    p.add_argument("--keep-centroids", action="store_true",
                   help="keep a drafter's centroid head in mainline output (llama.cpp cannot load such a file)")  # fmt: skip
    p.add_argument("--mmproj", action="store_true",
                   help="write the media towers (vision, and audio when the checkpoint has one) as llama.cpp's mmproj GGUF (for --mmproj at run time)")  # fmt: skip
    p.add_argument("--centroids-from", metavar="HF_DIR",
                   help="put the centroid head back into a drafter .gguf from its HF assistant checkpoint")  # fmt: skip

    p = _add(subparsers, "quantize", "requantize a GGUF (llama-quantize's mixes)",
             "Quantize a GGUF file as llama-quantize does (per-tensor mixes for the K-quant types, "
             "optionally weighted by an importance matrix).")  # fmt: skip
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("type", metavar="TYPE", help=f"one of {', '.join(FILE_TYPES)}")
    p.add_argument(
        "--allow-low-bit-drafter",
        action="store_true",
        help="lift the drafter policy against low-bit types (Q2_K, Q3_K_*; IQ types are not made)",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="importance matrix (llama-imatrix's .gguf or legacy .dat) weighting each tensor's encoding",
    )
    p.add_argument("--allow-requantize", action="store_true", help="allow tensors that are already quantized")

    p = _add(subparsers, "sanitize", "remove host paths from GGUF metadata",
             "Remove quantize.imatrix.file/dataset and every other absolute host path from the metadata.")  # fmt: skip
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT", nargs="?")
    p.add_argument("--in-place", action="store_true", help="rewrite IN (through a temp file)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 when leaks exist")
    p.add_argument(
        "--any-arch", action="store_true", help="also rewrite GGUFs of architectures gemma-mtp does not run"
    )

    p = _add(subparsers, "inspect", "show what a GGUF file holds",
             "Architecture, layout, hyperparameters, tensor types and sizes, bits per weight, leaks.")  # fmt: skip
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tensors", action="store_true", help="list every tensor")

    p = _add(
        subparsers,
        "diff",
        "compare the metadata of two GGUF files",
        "Metadata keys (and tensors) side by side.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _add(subparsers, "pair", "check that a drafter belongs to a target",
             "Check a target GGUF and a drafter GGUF: each check and a verdict (exit 1 when not compatible).")  # fmt: skip
    p.add_argument("target", metavar="TARGET")
    p.add_argument("draft", metavar="DRAFT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
