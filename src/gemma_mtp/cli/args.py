"""Flags of ``gemma-mtp run`` and ``chat``: llama.cpp names, old spellings kept as aliases.

Defaults come from ``RunOptions``/``ChatOptions`` and ``SamplingParams``; nothing here repeats a
default value. ``run`` and ``chat`` share the model, quantization, speculative, template and sampling
groups; the model-loading flags come from `cli.model_args`, shared with ``serve`` and ``bench``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from gemma_mtp.cli.model_args import add_load_arguments, add_quant_arguments, parse_quant_kernels
from gemma_mtp.cli.profile import add_profile_argument
from gemma_mtp.cli.spec_args import SpecFlags, add_spec_arguments
from gemma_mtp.demo import DEMO_P_MIN
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import UsageError
from gemma_mtp.sampling_params import SamplingParams
from gemma_mtp.speculative.options import SPEC_TYPES

__all__ = [
    "RunOptions",
    "ChatOptions",
    "SPEC_TYPES",
    "REASONING_CHOICES",
    "RUN_FIELDS",
    "SAMPLING_FIELDS",
    "add_run_arguments",
    "add_chat_arguments",
    "add_quant_arguments",
    "parse_token_ids",
    "parse_quant_kernels",
]

REASONING_CHOICES = ("auto", "on", "off")  # auto: the template's own default (llama.cpp's -rea)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything ``run`` needs besides sampling; the single source of the CLI's defaults.

    ``load`` and ``spec`` are the shared option objects (`LoadOptions`, `SpecFlags`), built from the
    flags `cli.model_args` and `cli.spec_args` declare."""

    load: LoadOptions = field(default_factory=LoadOptions)
    spec: SpecFlags = field(default_factory=SpecFlags)
    prompt: str | None = None
    escape: bool = False  # -e/--escape: \\n etc. in -p become characters (llama.cpp's default is on)
    file: str | None = None
    prompt_ids: list[int] | None = None
    n_predict: int = 128  # -1: until end of sequence or a full context
    chat: bool = False
    system_prompt: str | None = None
    chat_template_file: str | None = None
    # the template used when the model has none (no flag: the demo pair's, `with_demo_pair`)
    fallback_chat_template: str | None = None
    reasoning: str = "auto"
    json: bool = False
    profile: str | None = None  # --profile FILE: settings measured by bench --recommend
    no_profile: bool = False  # --no-profile: ignore the pair's default profile
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.n_predict < -1:
            raise UsageError(
                f"-n/--n-predict must be >= -1 (-1 = until end of sequence), got {self.n_predict}"
            )

    @property
    def enable_thinking(self) -> bool | None:
        """``--reasoning``: True/False for the template's ``enable_thinking``; None leaves it unset."""
        return {"on": True, "off": False}.get(self.reasoning)

    @property
    def uses_template(self) -> bool:
        """``--chat``, or any flag that only means something with the chat template."""
        return (
            self.chat
            or self.system_prompt is not None
            or self.chat_template_file is not None
            or self.reasoning != "auto"
        )


@dataclass(frozen=True, kw_only=True)
class ChatOptions(RunOptions):
    """``chat``: answers run until the model ends its turn (llama.cpp's interactive default)."""

    n_predict: int = -1


def parse_token_ids(text: str) -> list[int]:
    """``"2,105,7"`` -> ``[2, 105, 7]``; argparse turns the error into a one-line usage error."""
    ids = []
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not an integer token id") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is not a valid token id (must be >= 0)")
        ids.append(value)
    return ids


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RunOptions()
    _add_model_arguments(parser)
    add_spec_arguments(parser, p_min_help=_DEMO_P_MIN_HELP)
    add_profile_argument(parser)

    prompt = parser.add_argument_group("prompt and output")
    source = prompt.add_mutually_exclusive_group()
    source.add_argument("-p", "--prompt", default=defaults.prompt, metavar="TEXT", help="prompt text")
    source.add_argument(
        "-f", "--file", default=defaults.file, metavar="PATH", help="read the prompt text from a file"
    )
    source.add_argument(
        "--prompt-ids",
        dest="prompt_ids",
        type=parse_token_ids,
        default=defaults.prompt_ids,
        metavar="ID,ID,...",
        help="prompt as raw token ids, e.g. 2,105,2364 (needs no tokenizer)",
    )
    prompt.add_argument(
        "-e",
        "--escape",
        action=argparse.BooleanOptionalAction,
        default=defaults.escape,
        help="process escape sequences in -p (\\n, \\r, \\t, \\', \\\", \\\\, \\xNN) as llama.cpp does "
        "(default: off; llama.cpp's default is on)",
    )
    _add_n_predict(prompt, defaults)
    prompt.add_argument(
        "--jinja",
        "--chat",
        dest="chat",
        action="store_true",
        help="apply the model's chat template to the prompt (as one user message)",
    )
    prompt.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _add_template_arguments(parser, defaults, implies_chat=True)
    _add_log_arguments(parser)
    _add_sampling_arguments(parser)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ChatOptions()
    _add_model_arguments(parser)
    add_spec_arguments(parser, p_min_help=_DEMO_P_MIN_HELP)
    add_profile_argument(parser)
    _add_n_predict(parser.add_argument_group("answers"), defaults)
    _add_template_arguments(parser, defaults, implies_chat=False)
    _add_log_arguments(parser)
    _add_sampling_arguments(parser)


_DEMO_P_MIN_HELP = f"; {DEMO_P_MIN} for the demo drafter"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_load_arguments(
        parser,
        model_help="Hugging Face model directory or .gguf file (default: the demo pair, Gemma 3 270M + "
        "its trained drafter)",
        media=True,
    )


def _add_n_predict(group: argparse._ArgumentGroup, defaults: RunOptions) -> None:
    group.add_argument(
        "-n",
        "--n-predict",
        dest="n_predict",
        type=int,
        default=defaults.n_predict,
        metavar="N",
        help="tokens to generate, -1 = until end of sequence (default: %(default)s)",
    )


def _add_template_arguments(
    parser: argparse.ArgumentParser, defaults: RunOptions, *, implies_chat: bool
) -> None:
    group = parser.add_argument_group("chat template")
    implied = " (implies --chat)" if implies_chat else ""
    group.add_argument(
        "-sys",
        "--system-prompt",
        dest="system_prompt",
        default=defaults.system_prompt,
        metavar="TEXT",
        help=f"system message{implied}",
    )
    group.add_argument(
        "--chat-template-file",
        dest="chat_template_file",
        default=defaults.chat_template_file,
        metavar="FILE",
        help=f"use this Jinja template (or a tokenizer_config.json) instead of the model's{implied}",
    )
    group.add_argument(
        "-rea",
        "--reasoning",
        dest="reasoning",
        choices=REASONING_CHOICES,
        default=defaults.reasoning,
        help=f"thinking (the template's enable_thinking); auto = the template's default{implied}",
    )


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-q",
        "--quiet",
        "--log-disable",
        dest="quiet",
        action="store_true",
        help="no progress bar, load summary or timing lines on stderr (errors still print)",
    )
    group.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    sampling = SamplingParams()
    sample = parser.add_argument_group("sampling")
    sample.add_argument(
        "--temp",
        dest="temperature",
        type=float,
        default=sampling.temperature,
        metavar="T",
        help="temperature, <= 0 = greedy (default: %(default)s)",
    )
    sample.add_argument(
        "--top-k",
        dest="top_k",
        type=int,
        default=sampling.top_k,
        metavar="K",
        help="0 = off (default: %(default)s)",
    )
    sample.add_argument(
        "--top-p",
        dest="top_p",
        type=float,
        default=sampling.top_p,
        metavar="P",
        help="1.0 = off (default: %(default)s)",
    )
    sample.add_argument(
        "--min-p",
        dest="min_p",
        type=float,
        default=sampling.min_p,
        metavar="P",
        help="0.0 = off (default: %(default)s)",
    )
    sample.add_argument(
        "-s", "--seed", type=int, default=-1, metavar="SEED", help="random seed, -1 = random (default: -1)"
    )


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
# RunOptions' fields that are flags of their own name (load and spec are built by their modules)
RUN_FIELDS = tuple(
    f.name for f in dataclasses.fields(RunOptions) if f.name not in ("load", "spec", "fallback_chat_template")
)
