"""What ``run`` and ``chat`` share: flags to options, loading with a progress bar, summary lines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from gemma_mtp.cli.args import RUN_FIELDS, SAMPLING_FIELDS, RunOptions
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

if TYPE_CHECKING:
    from gemma_mtp.api import Engine, Result
    from gemma_mtp.tokenizer import Tokenizer

__all__ = [
    "options_from_args",
    "sampling_from_args",
    "spec_from_options",
    "with_demo_pair",
    "read_tokenizer",
    "load_engine",
    "load_summary",
    "print_lines",
    "summary_line",
    "status_line",
]

Options = TypeVar("Options", bound=RunOptions)

_SAMPLING_FLAGS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "seed": "-s/--seed",
}


def options_from_args(args: argparse.Namespace, cls: type[Options] = RunOptions) -> Options:
    return cls(**{name: getattr(args, name) for name in RUN_FIELDS if hasattr(args, name)})


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    values = {name: getattr(args, name) for name in SAMPLING_FIELDS}
    values["seed"] = None if values["seed"] == -1 else values["seed"]
    # Every check is per field, so validating one field at a time tells which flag is at fault.
    for field, flag in _SAMPLING_FLAGS.items():
        try:
            SamplingParams(**{field: values[field]})
        except UsageError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    return SamplingParams(**values)


def spec_from_options(options: RunOptions) -> SpecOptions:
    spec = SpecOptions(
        type=options.resolved_spec_type,
        n_max=options.spec_draft_n_max,
        n_min=options.spec_draft_n_min,
        p_min=SpecOptions().p_min if options.spec_draft_p_min is None else options.spec_draft_p_min,
        autotune=options.spec_autotune,
    )
    if spec.type in ("mtp", "draft") and options.model_draft is None:
        raise UsageError(f"--spec-type {spec.type} needs a drafter: pass -md/--model-draft")
    return spec


def with_demo_pair(options: Options) -> Options:
    """Without ``-m``: the embedded demo target, with the demo drafter unless ``-md`` or ``--spec-type``
    says otherwise (so the spec type defaults to mtp, as with any drafter). A notice on stderr names
    the pair; with ``-m``, the options are returned as they are (no implicit drafter)."""
    if options.model is not None:
        return options
    from gemma_mtp import demo

    drafter = options.model_draft
    implicit_drafter = drafter is None and (options.spec_type is None or options.resolved_spec_type == "mtp")
    if implicit_drafter:
        drafter = str(demo.demo_drafter())  # before the target: a missing file fails without a download
    if not options.quiet:
        print(_demo_notice(drafter, implicit_drafter), file=sys.stderr)
    p_min = options.spec_draft_p_min
    if implicit_drafter and p_min is None:  # the demo drafter's measured best (assets/drafters/README.md)
        p_min = demo.DEMO_P_MIN
    return dataclasses.replace(
        options, model=str(demo.demo_target()), model_draft=drafter, spec_draft_p_min=p_min
    )


def _demo_notice(drafter: str | None, implicit_drafter: bool) -> str:
    target = "the demo target Gemma 3 270M Q4_K_M (GGUF from PyPI, cached on first use)"
    if implicit_drafter:
        with_drafter = f" with its trained MTP drafter {Path(drafter).name}"
    elif drafter is not None:
        with_drafter = f" with -md {drafter}"
    else:
        with_drafter = ""
    return f"no -m/--model: using {target}{with_drafter}; pass -m (and -md) to run your own model"


def read_tokenizer(model: str, *, required: bool) -> Tokenizer | None:
    """The model's tokenizer (HF directory or GGUF metadata); None when absent and not required."""
    from gemma_mtp.tokenizer import load_tokenizer

    try:
        return load_tokenizer(model)
    except GemmaMTPError:
        if required:
            raise
        return None


def load_engine(options: RunOptions, spec: SpecOptions, *, show_progress: bool) -> Engine:
    """``gemma_mtp.load`` with the CLI's options; a tqdm bar on stderr when ``show_progress``."""
    from gemma_mtp import api  # imported here so that --help and usage errors stay light

    bar = _ProgressBar() if show_progress else None
    try:
        return api.load(
            options.model,
            options.model_draft if spec.type in ("mtp", "draft") else None,
            dtype=options.dtype,
            device=options.device,
            n_gpu_layers=options.n_gpu_layers,
            n_gpu_layers_draft=options.n_gpu_layers_draft,
            ctx_size=options.ctx_size,
            progress=bar,
            quantized=options.quantized,
            kernels=options.quant_kernels,
        )
    finally:
        if bar is not None:
            bar.close()


class _ProgressBar:
    """A ``progress(n_loaded, n_total)`` callback drawing a tqdm bar once the total is known."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="loading", unit="tensor", file=sys.stderr, leave=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def load_summary(engine: Engine, options: RunOptions) -> list[str]:
    """One line about the loaded target (plus one per loader notice), for stderr."""
    report = engine.load_report
    if report is None:
        return []
    path = Path(report.path)
    layout = "GGUF" if path.suffix == ".gguf" else "HF safetensors"
    dtype = str(report.dtype).removeprefix("torch.")
    drafter = f", drafter {options.model_draft}" if engine.drafter is not None else ""
    line = (
        f"loaded {path}: {engine.config.family}, {layout}, {dtype}, {report.device}, "
        f"{_size(report.n_bytes)} of weights, {engine.load_s:.2f} s{drafter}"
    )
    return [line, *(f"notice: {notice}" for notice in report.notices)]


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def print_lines(lines: list[str], stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    for line in lines:
        print(line, file=stream)


def summary_line(result: Result, elapsed: float) -> str:
    """`draft acceptance 0.74 (222/300), mean accepted length 2.9, 41.3 tok/s` (or plain timing)."""
    rate = result.timings.decode_tokens_per_s
    spec = result.speculative
    if spec is None:
        return f"{len(result.token_ids)} tokens in {elapsed:.2f} s, {rate:.1f} tok/s"
    return f"{_acceptance(spec)}, {rate:.1f} tok/s"


def status_line(result: Result) -> str:
    """After a chat answer: `[prompt 31 tokens, 12 tokens, 40.2 tok/s, draft acceptance ...]`."""
    parts = [
        f"prompt {result.n_prompt} tokens",
        f"{len(result.token_ids)} tokens",
        f"{result.timings.decode_tokens_per_s:.1f} tok/s",
    ]
    if result.speculative is not None:
        parts.append(_acceptance(result.speculative))
    return f"[{', '.join(parts)}]"


def _acceptance(spec: dict) -> str:
    return (
        f"draft acceptance {spec['acceptance_rate']:.2f} ({spec['accepted']}/{spec['drafted']}), "
        f"mean accepted length {spec['mean_accepted_length']:.1f}"
    )
