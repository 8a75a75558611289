"""What ``run`` and ``chat`` share: flags to options, loading with a progress bar, summary lines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from gemma_mtp.cli.args import RUN_FIELDS, SAMPLING_FIELDS, RunOptions
from gemma_mtp.cli.model_args import load_options_from_args
from gemma_mtp.cli.profile import apply_profile
from gemma_mtp.cli.spec_args import SpecFlags, spec_flags_from_args
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.sampling_params import SamplingParams

if TYPE_CHECKING:
    from gemma_mtp.api import Engine, Result
    from gemma_mtp.speculative.options import SpecOptions
    from gemma_mtp.tokenizer import Tokenizer

__all__ = [
    "options_from_args",
    "sampling_from_args",
    "resolve_spec",
    "demo_notice",
    "with_demo_pair",
    "demo_defaults",
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
    return cls(
        load=load_options_from_args(args),
        spec=spec_flags_from_args(args),
        **{name: getattr(args, name) for name in RUN_FIELDS if hasattr(args, name)},
    )


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


def resolve_spec(options: RunOptions, engine: Engine) -> SpecOptions:
    """The speculative options for this run: the flags, with the loaded engine's own default
    strategy when --spec-type is not given (mtp for an assistant, draft for a draft model)."""
    return options.spec.resolve(engine.default_spec().type)


def with_demo_pair(options: Options) -> Options:
    """Without ``-m``: the embedded demo pair (`demo_defaults`); with ``-m``, the options as they are
    (no implicit drafter). Also checks that an explicit mtp/draft strategy has its drafter."""
    load, spec = apply_profile(
        options.load, options.spec, options.profile, quiet=options.quiet, no_profile=options.no_profile
    )
    load, spec, template = demo_defaults(load, spec, quiet=options.quiet)
    return dataclasses.replace(options, load=load, spec=spec, fallback_chat_template=template)


def demo_defaults(
    load: LoadOptions, spec: SpecFlags, *, quiet: bool = False
) -> tuple[LoadOptions, SpecFlags, str | None]:
    """What ``run``, ``chat`` and ``serve`` load without ``-m``: the embedded demo target, with the
    demo drafter unless ``-md`` or ``--spec-type`` says otherwise (so the spec type defaults to mtp,
    as with any drafter) and the demo drafter's own p_min, and the demo pair's chat template as
    the fallback (the base model has none). A notice on stderr names the pair. Returns the load
    options, the speculative flags and the fallback template (None with ``-m``)."""
    from gemma_mtp import demo

    if load.model is not None:
        spec.check_drafter(load.model_draft)
        return load, spec, _demo_template_for(load.model)

    drafter = load.model_draft
    implicit_drafter = drafter is None and spec.type in (None, "mtp")
    if implicit_drafter:
        drafter = str(demo.demo_drafter())  # before the target: a missing file fails without a download
    if not quiet:
        print(demo_notice(drafter, implicit_drafter), file=sys.stderr)
    if (
        implicit_drafter and spec.p_min is None
    ):  # the demo drafter's measured best (assets/drafters/README.md)
        spec = dataclasses.replace(spec, p_min=demo.DEMO_P_MIN)
    spec.check_drafter(drafter)
    load = dataclasses.replace(load, model=str(demo.demo_target()), model_draft=drafter)
    return load, spec, str(demo.DEMO_CHAT_TEMPLATE)


def _demo_template_for(model: str) -> str | None:
    """The demo chat template when ``model`` is the demo target given by path (e.g. by a profile)."""
    from gemma_mtp import assets, demo

    if Path(model).name != assets.GEMMA3_FILE:
        return None
    return str(demo.DEMO_CHAT_TEMPLATE) if Path(model).resolve() == demo.demo_target().resolve() else None


def demo_notice(drafter: str | None, implicit_drafter: bool) -> str:
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


def load_engine(options: RunOptions, *, show_progress: bool) -> Engine:
    """``gemma_mtp.load`` with the CLI's options; a tqdm bar on stderr when ``show_progress``.
    A drafter is loaded only when the strategy drafts with one."""
    from gemma_mtp import api  # imported here so that --help and usage errors stay light

    load = options.load
    if not options.spec.wants_drafter:
        load = dataclasses.replace(load, model_draft=None)
    bar = _ProgressBar() if show_progress else None
    try:
        return api.load(load.model, load.model_draft, options=load, progress=bar)
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
    from gemma_mtp.gguf.formats import GGUF, model_format

    layout = "GGUF" if model_format(path) == GGUF else "HF safetensors"
    dtype = str(report.dtype).removeprefix("torch.")
    drafter = f", drafter {options.load.model_draft}" if engine.drafter is not None else ""
    threads = f", {engine.threads} threads" if engine.threads else ""
    line = (
        f"loaded {path}: {engine.config.family}, {layout}, {dtype}, {report.device}, "
        f"{_size(report.n_bytes)} of weights, {engine.load_s:.2f} s{threads}{drafter}"
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
