"""``gemma-mtp run``: one generation. Parses flags into options, calls the engine, formats."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gemma_mtp.cli.args import RUN_FIELDS, SAMPLING_FIELDS, RunOptions
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

__all__ = ["run_command", "options_from_args", "sampling_from_args", "summary_line"]

_SAMPLING_FLAGS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "seed": "-s/--seed",
}


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(**{name: getattr(args, name) for name in RUN_FIELDS if hasattr(args, name)})


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


def _prompt_ids(options: RunOptions) -> list[int]:
    # Text prompts and the chat template arrive with the tokenizer.
    if options.prompt is not None or options.file is not None:
        raise GemmaMTPError("text prompts need a tokenizer; this version accepts --prompt-ids")
    if options.chat:
        raise GemmaMTPError(
            "--chat/--jinja needs a tokenizer; this version accepts --prompt-ids without --chat"
        )
    if options.prompt_ids is None:
        raise UsageError("no prompt: pass --prompt-ids ID,ID,... (e.g. --prompt-ids 2,105,2364)")
    return options.prompt_ids


def run_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    sampling = sampling_from_args(args)
    prompt_ids = _prompt_ids(options)
    if options.model is None:
        raise UsageError("no model: pass -m/--model DIR (a Hugging Face model directory)")
    spec = SpecOptions(
        type=options.resolved_spec_type,
        n_max=options.spec_draft_n_max,
        n_min=options.spec_draft_n_min,
        p_min=options.spec_draft_p_min,
    )
    if spec.type in ("mtp", "draft") and options.model_draft is None:
        raise UsageError(f"--spec-type {spec.type} needs a drafter: pass -md/--model-draft")

    from gemma_mtp import api  # imported here so that --help and usage errors stay light

    engine = api.load(
        options.model,
        options.model_draft if spec.type in ("mtp", "draft") else None,
        dtype=options.dtype,
        device=options.device,
        n_gpu_layers=options.n_gpu_layers,
        n_gpu_layers_draft=options.n_gpu_layers_draft,
        ctx_size=options.ctx_size,
    )
    start = time.perf_counter()
    result = engine.generate(prompt_ids, n_predict=options.n_predict, sampling=sampling, spec=spec)
    elapsed = time.perf_counter() - start

    if options.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.text if result.text else ",".join(str(t) for t in result.token_ids))
        print(summary_line(result, elapsed), file=sys.stderr)
    return 0


def summary_line(result, elapsed: float) -> str:
    """`draft acceptance 0.74 (222/300), mean accepted length 2.9, 41.3 tok/s` (or plain timing)."""
    rate = result.timings.decode_tokens_per_s
    spec = result.speculative
    if spec is None:
        return f"{len(result.token_ids)} tokens in {elapsed:.2f} s, {rate:.1f} tok/s"
    return (
        f"draft acceptance {spec['acceptance_rate']:.2f} ({spec['accepted']}/{spec['drafted']}), "
        f"mean accepted length {spec['mean_accepted_length']:.1f}, {rate:.1f} tok/s"
    )
