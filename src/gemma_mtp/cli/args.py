"""Flags of ``gemma-mtp run`` and ``chat``: llama.cpp names, old spellings kept as aliases.

Defaults come from ``RunOptions``/``ChatOptions`` and ``SamplingParams``; nothing here repeats a
default value. ``run`` and ``chat`` share the model, quantization, speculative, template and sampling
groups; the model-loading flags come from `cli.model_args`, shared with ``serve`` and ``bench``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from gemma_mtp.cli.model_args import (
    add_ctx_size_argument,
    add_device_arguments,
    add_draft_argument,
    add_gpu_layer_arguments,
    add_model_argument,
    add_quant_arguments,
    parse_quant_kernels,
)
from gemma_mtp.demo import DEMO_P_MIN
from gemma_mtp.errors import UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SPEC_TYPES, SpecOptions

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

_SPEC = SpecOptions()  # the speculative defaults live in the engine's options, not here
_SPEC_ALIASES = {"draft-mtp": "mtp"}
REASONING_CHOICES = ("auto", "on", "off")  # auto: the template's own default (llama.cpp's -rea)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything ``run`` needs besides sampling; the single source of the CLI's defaults."""

    model: str | None = None
    model_draft: str | None = None
    spec_type: str | None = None  # None: "mtp" when a drafter is given, else "none"
    spec_draft_n_max: int = _SPEC.n_max
    spec_draft_n_min: int = _SPEC.n_min
    spec_draft_p_min: float | None = None  # None: the engine's default, or the demo drafter's own
    spec_autotune: bool = False
    prompt: str | None = None
    file: str | None = None
    prompt_ids: list[int] | None = None
    n_predict: int = 128  # -1: until end of sequence or a full context
    ctx_size: int = 4096
    device: str = "auto"
    n_gpu_layers: int | None = None  # None: every layer on the GPU when the device is one
    n_gpu_layers_draft: int | None = None
    dtype: str = "auto"
    quantized: bool | None = None  # GGUF only; None: the loader's default (quantized on the CPU)
    quant_kernels: dict[str, str] | None = None  # GGUF only; per-type kernel, e.g. {"Q8_0": "int8"}
    chat: bool = False
    system_prompt: str | None = None
    chat_template_file: str | None = None
    reasoning: str = "auto"
    json: bool = False
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.n_predict < -1:
            raise UsageError(
                f"-n/--n-predict must be >= -1 (-1 = until end of sequence), got {self.n_predict}"
            )
        if self.ctx_size < 1:
            raise UsageError(f"-c/--ctx-size must be >= 1, got {self.ctx_size}")
        # speculative knobs are validated by SpecOptions when run builds it

    @property
    def resolved_spec_type(self) -> str:
        if self.spec_type is None:
            return "mtp" if self.model_draft else "none"
        return _SPEC_ALIASES.get(self.spec_type, self.spec_type)

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
    _add_model_arguments(parser, defaults)
    add_quant_arguments(parser, defaults)
    _add_spec_arguments(parser, defaults)

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
    _add_model_arguments(parser, defaults)
    add_quant_arguments(parser, defaults)
    _add_spec_arguments(parser, defaults)
    _add_n_predict(parser.add_argument_group("answers"), defaults)
    _add_template_arguments(parser, defaults, implies_chat=False)
    _add_log_arguments(parser)
    _add_sampling_arguments(parser)


def _add_model_arguments(parser: argparse.ArgumentParser, defaults: RunOptions) -> None:
    model = parser.add_argument_group("models")
    add_model_argument(
        model,
        defaults,
        help="Hugging Face model directory or .gguf file (default: the demo pair, Gemma 3 270M + its trained drafter)",
    )
    add_draft_argument(model, defaults)
    add_device_arguments(model, defaults)
    add_gpu_layer_arguments(model, defaults)
    add_ctx_size_argument(model, defaults, help="context size in tokens (default: %(default)s)")


def _add_spec_arguments(parser: argparse.ArgumentParser, defaults: RunOptions) -> None:
    spec = parser.add_argument_group("speculative decoding")
    spec.add_argument(
        "--spec-type",
        dest="spec_type",
        choices=(*SPEC_TYPES, *_SPEC_ALIASES),
        default=defaults.spec_type,
        help="default: mtp when a drafter is given, else none",
    )
    spec.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft",
        dest="spec_draft_n_max",
        type=int,
        default=defaults.spec_draft_n_max,
        metavar="N",
        help="most tokens drafted per round (default: %(default)s)",
    )
    spec.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        dest="spec_draft_n_min",
        type=int,
        default=defaults.spec_draft_n_min,
        metavar="N",
        help="fewest tokens drafted per round (default: %(default)s)",
    )
    spec.add_argument(
        "--spec-draft-p-min",
        "--draft-p-min",
        dest="spec_draft_p_min",
        type=float,
        default=defaults.spec_draft_p_min,
        metavar="P",
        help=f"stop drafting below this draft probability (default: {_SPEC.p_min}; {DEMO_P_MIN} for the demo drafter)",
    )
    spec.add_argument(
        "--spec-autotune", dest="spec_autotune", action="store_true", help="tune the draft length"
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
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions))
