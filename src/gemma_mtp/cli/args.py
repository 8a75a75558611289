"""Flags of ``gemma-mtp run``: llama.cpp names, old spellings kept as aliases.

Defaults come from ``RunOptions`` and ``SamplingParams``; nothing here repeats a default value.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from gemma_mtp.errors import UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SPEC_TYPES, SpecOptions

__all__ = [
    "RunOptions",
    "SPEC_TYPES",
    "RUN_FIELDS",
    "SAMPLING_FIELDS",
    "add_run_arguments",
    "parse_token_ids",
]

_SPEC = SpecOptions()  # the speculative defaults live in the engine's options, not here
_SPEC_ALIASES = {"draft-mtp": "mtp"}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything ``run`` needs besides sampling; the single source of the CLI's defaults."""

    model: str | None = None
    model_draft: str | None = None
    spec_type: str | None = None  # None: "mtp" when a drafter is given, else "none"
    spec_draft_n_max: int = _SPEC.n_max
    spec_draft_n_min: int = _SPEC.n_min
    spec_draft_p_min: float = _SPEC.p_min
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
    chat: bool = False
    json: bool = False
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
    run = RunOptions()
    sampling = SamplingParams()

    model = parser.add_argument_group("models")
    model.add_argument(
        "-m",
        "--model",
        default=run.model,
        metavar="DIR",
        help="Hugging Face model directory (required for now)",
    )
    model.add_argument(
        "-md",
        "--model-draft",
        "--spec-draft-model",
        dest="model_draft",
        default=run.model_draft,
        metavar="DIR",
        help="drafter (MTP assistant or draft model) directory",
    )
    model.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default=run.device, help="(default: %(default)s)"
    )
    model.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=run.dtype,
        help="(default: %(default)s)",
    )
    model.add_argument(
        "-ngl",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=int,
        default=run.n_gpu_layers,
        metavar="N",
        help="target layers on the GPU (default: all when --device is a GPU)",
    )
    model.add_argument(
        "-ngld",
        "--n-gpu-layers-draft",
        dest="n_gpu_layers_draft",
        type=int,
        default=run.n_gpu_layers_draft,
        metavar="N",
        help="drafter layers on the GPU",
    )
    model.add_argument(
        "-c",
        "--ctx-size",
        dest="ctx_size",
        type=int,
        default=run.ctx_size,
        metavar="N",
        help="context size in tokens (default: %(default)s)",
    )

    spec = parser.add_argument_group("speculative decoding")
    spec.add_argument(
        "--spec-type",
        dest="spec_type",
        choices=(*SPEC_TYPES, *_SPEC_ALIASES),
        default=run.spec_type,
        help="default: mtp when a drafter is given, else none",
    )
    spec.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft",
        dest="spec_draft_n_max",
        type=int,
        default=run.spec_draft_n_max,
        metavar="N",
        help="most tokens drafted per round (default: %(default)s)",
    )
    spec.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        dest="spec_draft_n_min",
        type=int,
        default=run.spec_draft_n_min,
        metavar="N",
        help="fewest tokens drafted per round (default: %(default)s)",
    )
    spec.add_argument(
        "--spec-draft-p-min",
        "--draft-p-min",
        dest="spec_draft_p_min",
        type=float,
        default=run.spec_draft_p_min,
        metavar="P",
        help="stop drafting below this draft probability",
    )
    spec.add_argument(
        "--spec-autotune", dest="spec_autotune", action="store_true", help="tune the draft length"
    )

    prompt = parser.add_argument_group("prompt and output")
    source = prompt.add_mutually_exclusive_group()
    source.add_argument(
        "-p", "--prompt", default=run.prompt, metavar="TEXT", help="prompt text (needs a tokenizer)"
    )
    source.add_argument(
        "-f", "--file", default=run.file, metavar="PATH", help="read the prompt text from a file"
    )
    source.add_argument(
        "--prompt-ids",
        dest="prompt_ids",
        type=parse_token_ids,
        default=run.prompt_ids,
        metavar="ID,ID,...",
        help="prompt as raw token ids, e.g. 2,105,2364",
    )
    prompt.add_argument(
        "-n",
        "--n-predict",
        dest="n_predict",
        type=int,
        default=run.n_predict,
        metavar="N",
        help="tokens to generate, -1 = until end of sequence (default: %(default)s)",
    )
    prompt.add_argument("--jinja", "--chat", dest="chat", action="store_true", help="apply the chat template")
    prompt.add_argument("--json", action="store_true", help="print the result as one JSON object")
    prompt.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

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
