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

from ..cli.model_args import add_load_arguments, load_options_from_args
from ..demo import DEMO_P_MIN
from ..engine.options import LoadOptions
from ..errors import UsageError
from ..speculative.options import SPEC_CHOICES, canonical_spec_type
from .emit import ENGINES
from .prompts import PRESETS

__all__ = [
    "add_bench_arguments",
    "bench_command",
    "parse_int_list",
    "parse_float_list",
    "parse_spec_list",
]

DESCRIPTION = """\
Measure speculative decoding: for each drafter and draft length, acceptance by draft position,
mean accepted length, decode tokens/s and the speedup over plain decoding of the same target in
the same run (mean ± 1σ over reps with distinct seeds), overall and by prompt category. With
--endpoint, the same prompts against any OpenAI-compatible server instead."""


DEFAULT_PROFILES = "<default>"  # --recommend without FILE: each pair's default profile


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _list_of(kind: type, what: str, example: str):
    def parse(text: str) -> tuple:
        """`"1,2,3"` -> `(1, 2, 3)`; argparse turns the error into a usage error."""
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one value, e.g. {example}")
        return values

    return parse


parse_int_list = _list_of(int, "integers", "1,2,3,4")


def parse_spec_list(text: str) -> tuple[str, ...]:
    """`"mtp,ngram-simple"` -> `("mtp", "ngram")`: llama.cpp's names accepted, its strategies we lack
    refused naming what to use."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one strategy, e.g. mtp,ngram,none")
    for name in names:
        if name not in SPEC_CHOICES:
            try:
                canonical_spec_type(name)
            except UsageError as exc:
                raise argparse.ArgumentTypeError(str(exc).removeprefix("--spec-type ")) from None
            raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(SPEC_CHOICES)}")
    return tuple(dict.fromkeys(canonical_spec_type(n) for n in names))


parse_float_list = _list_of(float, "numbers", "0,0.6")


def add_bench_arguments(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the CLI's subparsers; returns its parser."""
    from .runner import BenchConfig  # light: no torch at import time

    d = _defaults(BenchConfig)
    p = subparsers.add_parser(
        "bench",
        help="measure acceptance and speed of speculative decoding",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_load_arguments(
        p,
        model_help="target: Hugging Face directory or .gguf (default: the demo pair, Gemma 3 270M + its "
        "trained drafter; -m A B ... and -md X Y ... (or -md X -md Y) compare several)",
        ctx_help="context size in tokens (default: the longest prompt + -n + room for drafts and for "
        "each prompt's images and audio)",
        drafts_repeatable=True,
        models_repeatable=True,
        group_title="models (local mode)",
        ctx_default=None,
        media=True,
    )

    spec = p.add_argument_group("speculative decoding")
    spec.add_argument(
        "--spec-type",
        dest="spec_type",
        type=parse_spec_list,
        default=d["spec_type"],
        metavar="TYPE,TYPE,...",
        help=f"strategies to compare, crossed with every other axis ({', '.join(SPEC_CHOICES)}; "
        "none = plain decoding only, always measured as the baseline); default: each drafter's own "
        "(mtp for an assistant, draft for a draft model), ngram without -md",
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
        "--p-min",
        "--spec-draft-p-min",
        dest="p_min",
        type=parse_float_list,
        default=None,
        metavar="P,P,...",
        help="draft confidence thresholds to compare, crossed with every --n-max (default: 0; "
        f"{DEMO_P_MIN} for the implied demo drafter)",
    )
    spec.add_argument(
        "--spec-autotune", dest="autotune", action="store_true", help="also run the draft-length autotuner"
    )
    spec.add_argument(
        "--recommend",
        nargs="?",
        const=DEFAULT_PROFILES,
        metavar="FILE",
        help="write the fastest configuration as a profile that run, chat and serve read with --profile "
        "FILE; without FILE, as each benched pair's default profile (in $GEMMA_MTP_PROFILES, else "
        "$GEMMA_MTP_CACHE/profiles), which run, chat and serve apply by themselves",
    )

    spec.add_argument(
        "--check-lossless",
        dest="check_lossless",
        nargs="?",
        type=int,
        const=200,
        default=d["check_lossless"],
        metavar="DRAWS",
        help="at temperature > 0: compare the first committed tokens of plain and speculative decoding "
        "over DRAWS seeded generations (default 200) with a chi-square test, per drafter, reported in "
        "the rows (greedy rows always compare outputs)",
    )
    spec.add_argument(
        "--emit",
        choices=ENGINES,
        help="print the profile (--recommend's, else --profile FILE, else the -m/-md pair's default "
        "profile) as launch flags for that engine, after checking the pair; without --recommend "
        "nothing is benched",
    )
    spec.add_argument("--profile", metavar="FILE", help="the profile --emit prints (default: the pair's)")

    run = p.add_argument_group("workload (a --preset sets what these leave open)")
    run.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="seeds: the seeds' protocol, 5 coding/reasoning chat prompts x 200 tokens, --temp 0.3, "
        "thinking off, 3 reps",
    )
    run.add_argument(
        "--prompts",
        default=None,
        metavar="builtin|seeds|FILE",
        help="JSONL: category, prompt, and optionally images and audio (lists of files relative to "
        f"the JSONL file) (default: {d['prompts']})",
    )
    run.add_argument(
        "-n",
        "--n-predict",
        dest="n_predict",
        type=int,
        default=None,
        metavar="N",
        help=f"(default: {d['n_predict']})",
    )
    run.add_argument(
        "--reps", type=int, default=None, help=f"repetitions, distinct seeds (default: {d['reps']})"
    )
    run.add_argument(
        "--temp",
        dest="temperature",
        type=parse_float_list,
        default=None,
        metavar="T,T,...",
        help=f"temperatures to compare, each with its own plain baseline (default: {d['temperature']})",
    )
    run.add_argument(
        "--chat",
        "--jinja",
        dest="chat",
        action="store_true",
        default=None,
        help="send text prompts as one user message through the model's chat template",
    )
    run.add_argument(
        "--chat-template-file",
        dest="chat_template_file",
        default=None,
        metavar="FILE",
        help="with --chat: this Jinja template (or tokenizer_config.json) instead of the model's",
    )
    run.add_argument(
        "-rea",
        "--reasoning",
        choices=("auto", "on", "off"),
        default=None,
        help="thinking in the chat template (enable_thinking); auto = the template's default",
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


def _workload(args: argparse.Namespace) -> None:
    """Fill the workload flags left open from --preset, then from BenchConfig's defaults."""
    from .runner import BenchConfig

    preset = PRESETS.get(args.preset or "", {})
    defaults = _defaults(BenchConfig)
    for name in ("prompts", "n_predict", "reps", "temperature", "chat", "reasoning"):
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, defaults[name]))
    if not isinstance(args.temperature, tuple):
        args.temperature = (args.temperature,)


def _check_profile_path(path: str | None) -> None:
    """--recommend FILE must be writable where it is named: fail in a second, not after the run."""
    if path is None or path == DEFAULT_PROFILES:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(
            f"--recommend {path}: the folder {parent} does not exist; create it first or name another file"
        )
    if not os.access(parent, os.W_OK):
        raise UsageError(
            f"--recommend {path}: cannot write in {parent}; name a file in a folder you can write"
        )


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "emit", None) and not args.recommend:
        return _emit(args, _profile_to_emit(args))
    _workload(args)
    _check_profile_path(getattr(args, "recommend", None))  # before the benchmark, not after it
    if args.endpoints:
        rows = _run_endpoints(args)
    else:
        rows = _run_local(args)
    _print_table(rows)
    if getattr(args, "recommend", None) == DEFAULT_PROFILES:
        from ..cli.profile import write_default_profiles

        written = write_default_profiles(rows)
        for path, profile in written:
            _progress(f"wrote {path}: {profile.summary()}")
        profile = written[-1][1]  # the first target's own: the best of all its rows
    elif getattr(args, "recommend", None):
        from ..cli.profile import recommend, write_profile

        profile = recommend(rows)
        write_profile(args.recommend, profile)
        _progress(f"wrote {args.recommend}: {profile.summary()}")
    if args.out:
        from .report import write_report

        for path in write_report(rows, Path(args.out)):
            _progress(f"wrote {path}")
    if getattr(args, "emit", None):
        return _emit(args, profile)
    return 0


def _profile_to_emit(args: argparse.Namespace):
    from ..cli.profile import find_default_profile, read_profile
    from ..cli.spec_args import SpecFlags

    if args.profile:
        return read_profile(args.profile)
    models = args.models or [None]
    load = LoadOptions(model=models[0], model_draft=args.drafts[0] if args.drafts else None)
    found = find_default_profile(load, SpecFlags())
    if found is None:
        raise UsageError(
            "--emit needs a profile: give --profile FILE, or measure the pair first with "
            "gemma-mtp bench -m TARGET -md DRAFTER --recommend"
        )
    _progress(f"using profile {found}")
    return read_profile(found)


def _emit(args: argparse.Namespace, profile) -> int:
    """Check the pair as `gemma-mtp pair` does, then print the engine's command on stdout."""
    from .emit import launch_flags

    if profile.drafter and profile.strategy == "mtp":
        _check_pair(profile.target, profile.drafter)
    launch = launch_flags(
        args.emit,
        target=profile.target,
        strategy=profile.strategy,
        drafter=profile.drafter,
        n_max=profile.n_max,
        p_min=profile.p_min,
    )
    _progress(f"{args.emit} for {profile.summary()}")
    for note in launch.notes:
        _progress(f"note: {note}")
    print(launch.command())
    return 0


def _check_pair(target: str, drafter: str) -> None:
    from ..gguf.formats import GGUF, model_format

    if not (model_format(Path(target)) == GGUF and model_format(Path(drafter)) == GGUF):
        _progress(
            "note: pair not checked (gemma-mtp pair reads GGUF files; the runtime checked it when benching)"
        )
        return
    from ..errors import GemmaMTPError
    from ..tools.pair import pair_gguf

    report = pair_gguf(target, drafter)
    if not report.compatible:
        raise GemmaMTPError(f"--emit: {Path(drafter).name} with {Path(target).name}: {report.verdict}")
    _progress(f"pair: {report.verdict}")
    for warning in report.warnings:
        _progress(f"warning: {warning}")


def _run_local(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .runner import BenchConfig, run_bench

    drafts = tuple(args.drafts)
    models = tuple(args.models or ())
    model = models[0] if models else None
    if model is None:
        from ..cli.common import demo_notice
        from ..demo import DEMO_CHAT_TEMPLATE, demo_drafter, demo_target

        implicit = not drafts and (args.spec_type is None or "mtp" in args.spec_type)
        if implicit and args.p_min is None:  # the demo drafter's measured best, as run uses it
            args.p_min = (DEMO_P_MIN,)
        if implicit:
            drafts = (str(demo_drafter()),)  # before the target: a missing file fails without a download
        print(demo_notice(drafts[0] if drafts else None, implicit), file=sys.stderr)
        model = str(demo_target())
        fallback = str(DEMO_CHAT_TEMPLATE)  # the demo target is a base model without a template
    else:
        fallback = None
    n_max = args.n_max if args.n_max is not None else _defaults(BenchConfig)["n_max"]
    load = load_options_from_args(args, model=model, model_draft=None, ctx_size=LoadOptions().ctx_size)
    config = BenchConfig(
        load=load,
        drafts=drafts,
        spec_type=args.spec_type,
        n_max=n_max,
        p_min=args.p_min if args.p_min is not None else _defaults(BenchConfig)["p_min"],
        autotune=args.autotune,
        reps=args.reps,
        prompts=args.prompts,
        n_predict=args.n_predict,
        temperature=args.temperature[0],
        temperatures=args.temperature if len(args.temperature) > 1 else (),
        targets=models if len(models) > 1 else (),
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        ctx_size=args.ctx_size,
        chat=args.chat,
        reasoning=args.reasoning,
        chat_template_fallback=fallback,
        chat_template_file=args.chat_template_file,
        check_lossless=args.check_lossless,
    )
    return run_bench(config, progress=_progress)


def _run_endpoints(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .endpoint import EndpointConfig, run_endpoint_bench

    if args.models or args.drafts:
        raise UsageError("--endpoint measures a running server; drop -m/-md (the server loads the models)")
    if len(args.temperature) > 1:
        raise UsageError("--endpoint takes one --temp; run it once per temperature")
    config = EndpointConfig(
        endpoints=tuple(args.endpoints),
        model=args.endpoint_model,
        n_max=args.n_max or (),
        reps=args.reps,
        prompts=args.prompts,
        n_predict=args.n_predict,
        temperature=args.temperature[0],
        seed=args.seed,
        api_key=args.api_key,
        chat=bool(args.chat),
        reasoning=args.reasoning,
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
