"""`gemma-mtp bench`: flags, then one call to the runner (local) or the endpoint client, then output.

Defaults come from `BenchConfig` / `EndpointConfig`; nothing here repeats a default value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from ..cli.model_args import (
    add_ctx_size_argument,
    add_device_arguments,
    add_draft_argument,
    add_model_argument,
    add_quant_arguments,
    add_threads_argument,
)
from ..errors import UsageError

__all__ = ["add_bench_arguments", "bench_command", "parse_int_list"]

DESCRIPTION = """\
Measure speculative decoding: for each drafter and draft length, acceptance by draft position,
mean accepted length, decode tokens/s and the speedup over plain decoding of the same target in
the same run (mean ± 1σ over reps with distinct seeds), overall and by prompt category. With
--endpoint, the same prompts against any OpenAI-compatible server instead."""


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def parse_int_list(text: str) -> tuple[int, ...]:
    """`"1,2,3"` -> `(1, 2, 3)`; argparse turns the error into a usage error."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one draft length, e.g. 1,2,3,4")
    return values


def add_bench_arguments(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the CLI's subparsers; returns its parser."""
    from .runner import BenchConfig  # light: no torch at import time

    d = _defaults(BenchConfig)
    defaults = argparse.Namespace(model=None, **d)  # the shared model flags read attributes
    p = subparsers.add_parser(
        "bench",
        help="measure acceptance and speed of speculative decoding",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    models = p.add_argument_group("models (local mode)")
    add_model_argument(models, defaults, help="target: Hugging Face directory or .gguf")
    add_draft_argument(
        models,
        defaults,
        repeatable=True,
        help="drafter; repeat to compare several (e.g. one drafter at several quantizations)",
    )
    add_device_arguments(models, defaults)
    add_ctx_size_argument(
        models, defaults, help="context size in tokens (default: the longest prompt + -n + room for drafts)"
    )
    add_threads_argument(models, help="CPU threads for torch")
    add_quant_arguments(p, defaults)

    spec = p.add_argument_group("speculative decoding")
    spec.add_argument(
        "--spec-type",
        dest="spec_type",
        choices=("mtp", "draft-mtp", "ngram", "draft"),
        default=d["spec_type"],
        help="default: mtp with -md, else ngram",
    )
    spec.add_argument(
        "--n-max",
        "--spec-draft-n-max",
        dest="n_max",
        type=parse_int_list,
        default=None,
        metavar="N,N,...",
        help=f"draft lengths to compare (default: {','.join(map(str, d['n_max']))}; "
        "with --endpoint: the server's own setting)",
    )
    spec.add_argument(
        "--spec-autotune", dest="autotune", action="store_true", help="also run the draft-length autotuner"
    )

    run = p.add_argument_group("workload")
    run.add_argument(
        "--prompts", default=d["prompts"], metavar="builtin|FILE", help="JSONL: category, prompt"
    )
    run.add_argument(
        "-n",
        "--n-predict",
        dest="n_predict",
        type=int,
        default=d["n_predict"],
        metavar="N",
        help="(default: %(default)s)",
    )
    run.add_argument(
        "--reps", type=int, default=d["reps"], help="repetitions, distinct seeds (default: %(default)s)"
    )
    run.add_argument(
        "--temp", dest="temperature", type=float, default=d["temperature"], help="(default: %(default)s)"
    )
    run.add_argument("--top-k", dest="top_k", type=int, default=d["top_k"])
    run.add_argument("--top-p", dest="top_p", type=float, default=d["top_p"])
    run.add_argument("--min-p", dest="min_p", type=float, default=d["min_p"])
    run.add_argument("-s", "--seed", type=int, default=d["seed"])

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="write rows.jsonl, PNG plots and report.md here")

    remote = p.add_argument_group("endpoint mode")
    remote.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        default=[],
        metavar="URL",
        help="OpenAI-compatible server; repeat to compare (the first is the speedup baseline)",
    )
    remote.add_argument("--endpoint-model", metavar="NAME", help="the request's model field")
    remote.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="(default: $OPENAI_API_KEY)"
    )
    return p


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def bench_command(args: argparse.Namespace) -> int:
    if args.endpoints:
        rows = _run_endpoints(args)
    else:
        rows = _run_local(args)
    _print_table(rows)
    if args.out:
        from .report import write_report

        for path in write_report(rows, Path(args.out)):
            _progress(f"wrote {path}")
    return 0


def _run_local(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .runner import BenchConfig, run_bench

    if args.model is None:
        raise UsageError("bench needs -m/--model (a target), or --endpoint URL for a server")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    n_max = args.n_max if args.n_max is not None else _defaults(BenchConfig)["n_max"]
    config = BenchConfig(
        model=args.model,
        drafts=tuple(args.drafts),
        spec_type=args.spec_type,
        n_max=n_max,
        autotune=args.autotune,
        reps=args.reps,
        prompts=args.prompts,
        n_predict=args.n_predict,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        ctx_size=args.ctx_size,
        quantized=args.quantized,
        quant_kernels=args.quant_kernels,
    )
    return run_bench(config, progress=_progress)


def _run_endpoints(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .endpoint import EndpointConfig, run_endpoint_bench

    if args.model or args.drafts:
        raise UsageError("--endpoint measures a running server; drop -m/-md (the server loads the models)")
    config = EndpointConfig(
        endpoints=tuple(args.endpoints),
        model=args.endpoint_model,
        n_max=args.n_max or (),
        reps=args.reps,
        prompts=args.prompts,
        n_predict=args.n_predict,
        temperature=args.temperature,
        seed=args.seed,
        api_key=args.api_key,
    )
    return run_endpoint_bench(config, progress=_progress)


def _print_table(rows: list[dict[str, Any]]) -> None:
    from .report import markdown_table, rich_table

    try:
        from rich.console import Console
    except ImportError:
        print(markdown_table(rows))
        return
    Console(file=sys.stdout, width=max(120, Console().width)).print(rich_table(rows))
