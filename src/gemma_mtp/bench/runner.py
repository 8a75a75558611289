"""The local benchmark: one target, one or more drafters, several draft lengths, plain decoding as
the baseline, all in one run.

The target is loaded once; each drafter gets an `Engine` sharing it, so plain decoding (measured
once per rep) is the same computation for every drafter. Runs go rep by rep, and inside a rep
through every configuration, so that a change in machine load hits all of them alike; each rep
uses its own seeds (the same ones for every configuration). Autotune starts cold in every rep.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engine.options import LoadOptions
from ..errors import UsageError
from ..sampling_params import SamplingParams
from ..speculative.options import MAX_DRAFT, SPEC_TYPES, SpecOptions, canonical_spec_type
from .prompts import BenchPrompt, load_prompts, media_room, user_content, with_placeholders
from .provenance import environment, weights_description
from .stats import Generation, summarize

__all__ = ["BenchConfig", "run_bench", "summarize_runs"]

_SAMPLING = SamplingParams()


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Everything `gemma-mtp bench` runs locally; the CLI reads its defaults from here."""

    load: LoadOptions  # the target (its model_draft is unused: drafters are `drafts`)
    drafts: tuple[str, ...] = ()
    # --spec-type mtp,ngram,draft,none: the strategies benched, each crossed with every other axis;
    # None (or ()): each drafter's own strategy (mtp for an assistant), ngram without -md. A name or
    # a tuple of names (llama.cpp's aliases accepted); plain decoding ("none") is always the baseline.
    spec_type: tuple[str, ...] | str | None = None
    n_max: tuple[int, ...] = (1, 2, 3, 4)
    p_min: tuple[float, ...] = (0.0,)  # --p-min: draft confidence thresholds, crossed with every n_max
    autotune: bool = False  # also run --spec-autotune (a row with n_max "auto")
    reps: int = 3
    prompts: str = "builtin"
    n_predict: int = 200
    temperature: float = 0.3
    top_k: int = _SAMPLING.top_k
    top_p: float = _SAMPLING.top_p
    min_p: float = _SAMPLING.min_p
    seed: int = 0
    ctx_size: int | None = None  # None: the longest prompt + n_predict + room for drafts
    chat: bool = False  # render text prompts as one user message through the chat template
    reasoning: str = "auto"  # the template's enable_thinking: on | off | auto (its own default)
    chat_template_fallback: str | None = None  # the template when the model has none (the demo pair's)
    chat_template_file: str | None = None  # --chat-template-file: instead of the model's template
    targets: tuple[str, ...] = ()  # more targets (-m A B ...): each benched in turn; () = load.model
    temperatures: tuple[float, ...] = ()  # --temp 0,0.3: each its own runs; () = temperature
    # --check-lossless DRAWS: at temperature > 0, plain vs speculative first tokens over DRAWS seeds
    # (`lossless.check_lossless_sampling`), per drafter; 0: off (greedy rows are always compared)
    check_lossless: int = 0

    def __post_init__(self) -> None:
        names = (self.spec_type,) if isinstance(self.spec_type, str) else tuple(self.spec_type or ())
        kinds = tuple(dict.fromkeys(canonical_spec_type(k) for k in names))
        object.__setattr__(self, "spec_type", kinds or None)
        if self.reps < 1:
            raise UsageError(f"--reps must be >= 1, got {self.reps}")
        if self.check_lossless < 0:
            raise UsageError(f"--check-lossless takes a number of draws >= 1, got {self.check_lossless}")
        if self.n_predict < 2:
            raise UsageError(f"-n/--n-predict must be >= 2 for a decode rate, got {self.n_predict}")
        if not self.n_max and not self.autotune:
            raise UsageError("--n-max lists no draft length; give e.g. --n-max 1,2,3,4 or --spec-autotune")
        for n in self.n_max:
            if not 1 <= n <= MAX_DRAFT:
                raise UsageError(f"--n-max {n} is out of range; use 1..{MAX_DRAFT}")
        for p in self.p_min:
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"--p-min {p} must be between 0 and 1")
        if self.load.model is None:
            raise UsageError("bench needs -m/--model (a target), or --endpoint URL for a server")
        for kind in self.spec_type or ():
            if kind not in SPEC_TYPES:
                raise UsageError(f"--spec-type {kind!r} is not one of {', '.join(SPEC_TYPES)}")
        if self.spec_type is None:
            return
        needs_drafter = [k for k in self.spec_type if k in ("mtp", "draft")]
        if needs_drafter and not self.drafts:
            raise UsageError(
                f"--spec-type {needs_drafter[0]} needs at least one drafter: pass -md/--model-draft"
            )
        if self.drafts and not needs_drafter:
            listed = ",".join(self.spec_type)
            raise UsageError(
                f"--spec-type {listed} uses no drafter model; drop -md or add mtp/draft to the list"
            )

    @property
    def strategies(self) -> tuple[str, ...]:
        """The strategies benched besides plain decoding; "drafter" stands for each drafter's own
        (`Engine.default_spec`: mtp for an assistant, draft for a draft model)."""
        if self.spec_type is None:
            return ("drafter",) if self.drafts else ("ngram",)
        drafting = tuple(k for k in self.spec_type if k != "none")
        return drafting

    @property
    def model(self) -> str:
        return str(self.load.model)

    def sampling(self, seed: int) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p, seed=seed
        )


@dataclass
class _Group:
    """One drafter (or the n-gram lookup) and the engine that drafts with it."""

    label: str
    path: str | None
    engine: Any
    kind: str  # the strategy its rows draft with: mtp, draft or ngram


@dataclass
class _Runs:
    generations: dict[tuple[str, str], list[Generation]] = field(default_factory=dict)
    outputs: dict[tuple[str, str], dict[tuple[int, int], list[int]]] = field(default_factory=dict)

    def add(self, key: tuple[str, str], rep: int, index: int, prompt: BenchPrompt, result: Any) -> None:
        gen = Generation.from_result(result, category=prompt.category, rep=rep)
        self.generations.setdefault(key, []).append(gen)
        self.outputs.setdefault(key, {})[(rep, index)] = list(result.token_ids)


PLAIN = ("none", "plain")


def run_bench(config: BenchConfig, *, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every configuration for every target and temperature; the JSONL rows (`summarize_runs`).

    Targets go one at a time (each loaded once, its drafters beside it, then released); inside a
    target, each temperature is a full set of reps with its own plain-decoding baseline."""
    say = progress or (lambda message: None)
    rows: list[dict[str, Any]] = []
    for target in config.targets or (config.model,):
        one = dataclasses.replace(config, load=dataclasses.replace(config.load, model=target))
        prompts = load_prompts(one.prompts)
        if config.check_lossless and all(p.has_media for p in prompts):
            raise UsageError("--check-lossless draws on a prompt without media; --prompts has none")
        ids = _encode(prompts, one)
        longest = max(len(i) + media_room(p) for i, p in zip(ids, prompts, strict=True))
        base, groups = _load(one, longest, say)
        ids = _media_ready(base, groups, prompts, ids)
        for temperature in config.temperatures or (config.temperature,):
            at = dataclasses.replace(one, temperature=temperature)
            rows += _run_loaded(at, base, groups, prompts, ids, say)
        del base, groups
        gc.collect()
    return rows


def _run_loaded(config: BenchConfig, base, groups, prompts, ids, say) -> list[dict[str, Any]]:
    say(f"warm-up ({Path(config.model).name}, temperature {config.temperature:g})")
    warm = [(base, SpecOptions())] + [(g.engine, _specs(config, g)[0][1]) for g in groups]
    for engine, spec in warm:
        sampling = config.sampling(config.seed)
        engine.generate(ids[0], n_predict=8, sampling=sampling, spec=spec, **prompts[0].media())
    runs = _Runs()
    for rep in range(config.reps):
        say(f"rep {rep + 1}/{config.reps}: plain decoding")
        _measure(base, SpecOptions(), PLAIN, rep, prompts, ids, config, runs)
        for group in groups:
            group.engine.decoder.autotuners.clear()
            for label, spec in _specs(config, group):
                say(f"rep {rep + 1}/{config.reps}: {group.label} {label}")
                _measure(group.engine, spec, (group.label, label), rep, prompts, ids, config, runs)
    rows = summarize_runs(config, runs, groups, base)
    if config.check_lossless and config.temperature > 0:
        from .lossless import check_lossless_sampling

        text_only = next(i for i, p in enumerate(prompts) if not p.has_media)
        for group in groups:
            label, spec = _specs(config, group)[0]
            say(f"lossless check: {group.label} {label}, {config.check_lossless} seeded draws")
            check = check_lossless_sampling(
                base,
                group.engine,
                ids[text_only],
                sampling=config.sampling(config.seed),
                spec=spec,
                draws=config.check_lossless,
                seed=config.seed + 1_000_000,
            )
            for row in rows:
                if row["drafter"] == group.label:
                    row["lossless_sampling"] = check
    return rows


def _specs(config: BenchConfig, group: _Group) -> list[tuple[str, SpecOptions]]:
    kind = group.kind
    specs = [
        (_label(n, p, config), SpecOptions(type=kind, n_max=n, p_min=p))
        for n in config.n_max
        for p in config.p_min
    ]
    if config.autotune:
        specs.append(("auto", SpecOptions(type=kind, n_max=3, autotune=True, p_min=config.p_min[0])))
    return specs


def _label(n_max: int, p_min: float, config: BenchConfig) -> str:
    return f"n={n_max}" if len(config.p_min) == 1 else f"n={n_max} p={p_min:g}"


def _measure(engine, spec, key, rep, prompts, ids, config, runs: _Runs) -> None:
    for index, (prompt, prompt_ids) in enumerate(zip(prompts, ids, strict=True)):
        sampling = config.sampling(config.seed + 1000 * rep + index)
        result = engine.generate(
            prompt_ids, n_predict=config.n_predict, sampling=sampling, spec=spec, **prompt.media()
        )
        runs.add(key, rep, index, prompt, result)


def _media_ready(base, groups: list[_Group], prompts: Sequence[BenchPrompt], ids: list[list[int]]):
    """For prompts with media: the towers they need (one MediaError naming a missing tower, before
    any run), one encoder shared by every engine, and each prompt's placeholders."""
    images, audio = any(p.images for p in prompts), any(p.audio for p in prompts)
    if not (images or audio):
        return ids
    encoder = base.media_encoder()
    encoder.require(images=images, audio=audio)
    for group in groups:
        group.engine.media = encoder
    pairs = enumerate(zip(ids, prompts, strict=True), 1)
    return [with_placeholders(i, p, encoder.tokens, n) for n, (i, p) in pairs]


def _encode(prompts: Sequence[BenchPrompt], config: BenchConfig) -> list[list[int]]:
    """Token ids per prompt; text through the tokenizer, and with ``chat`` through the template."""
    if not any(p.is_text for p in prompts):
        return [list(p.prompt) for p in prompts]
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    if not config.chat:
        return [tokenizer.encode(p.prompt) if p.is_text else list(p.prompt) for p in prompts]
    from ..chat import ChatTemplate

    template = ChatTemplate.for_tokenizer(
        tokenizer, override_file=config.chat_template_file, fallback_file=config.chat_template_fallback
    )
    thinking = {"on": True, "off": False}.get(config.reasoning)

    def render(prompt: BenchPrompt) -> list[int]:
        message = {"role": "user", "content": user_content(prompt)}
        return tokenizer.encode(template.render([message], enable_thinking=thinking))

    return [render(p) if p.is_text else list(p.prompt) for p in prompts]


def _load(config: BenchConfig, longest_prompt: int, say: Callable[[str], None]) -> tuple[Any, list[_Group]]:
    from ..api import load

    ctx = config.ctx_size or longest_prompt + config.n_predict + MAX_DRAFT + 2
    options = dataclasses.replace(config.load, model_draft=None, ctx_size=ctx)
    say(f"loading {config.model}")
    base = load(options=options)
    drafters, seen = [], set()
    for path in config.drafts:
        say(f"loading {path}")
        # the same load rules as run and serve (dtype and quantization follow the target); the
        # target itself is shared, not loaded again
        engine = load(options=options, model_draft=path, reuse_target=base)
        label = Path(path).name
        label = label if label not in seen else f"{label}#{len(drafters) + 1}"
        seen.add(label)
        drafters.append(_Group(label, path, engine, engine.default_spec().type))
    return base, _arrange(config, base, drafters)


def _arrange(config: BenchConfig, base: Any, drafters: list[_Group]) -> list[_Group]:
    """The groups in --spec-type's order: each drafter under its own strategy, ngram on the target."""
    groups: list[_Group] = []
    for kind in config.strategies:
        if kind == "ngram":
            groups.append(_Group("ngram", None, base, "ngram"))
            continue
        mine = [d for d in drafters if kind in ("drafter", d.kind)]
        if not mine:
            what = ", ".join(f"{d.label} is {_WHAT[d.kind]}" for d in drafters)
            raise UsageError(f"--spec-type {kind}: no -md drafter drafts that way ({what})")
        groups += mine
    unused = [d for d in drafters if d not in groups]
    if unused:
        raise UsageError(
            f"-md {unused[0].path} is {_WHAT[unused[0].kind]} ({unused[0].kind}), not in --spec-type "
            f"{','.join(config.spec_type or ())}; add {unused[0].kind} or drop the file"
        )
    return groups


_WHAT = {"mtp": "an MTP assistant", "draft": "a draft model", "ngram": "n-gram lookup", "none": "no drafter"}


def summarize_runs(config: BenchConfig, runs: _Runs, groups: list[_Group], base: Any) -> list[dict[str, Any]]:
    """One row per (drafter, configuration, category), category "all" first, plain decoding first."""
    common = {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **environment(config.load.device if config.load.device != "auto" else str(base.target.device)),
        "mode": "local",
        "model": config.model,
        "model_weights": weights_description(config.model),
        "dtype": str(base.target.dtype).removeprefix("torch."),
        "flags": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "n_predict": config.n_predict,
        "temperature": config.temperature,
    }
    plain = runs.generations[PLAIN]
    categories = ["all", *sorted({g.category for g in plain})]
    baseline = {c: {r: s["tokens_per_s"] for r, s in _per_rep(plain, c).items()} for c in categories}
    rows = []
    keys = [PLAIN] + [(g.label, label) for g in groups for label in _labels(runs, g.label)]
    paths = {g.label: g.path for g in groups}
    kinds = {g.label: g.kind for g in groups}
    options = {(g.label, label): spec for g in groups for label, spec in _specs(config, g)}
    weights = {label: weights_description(path) for label, path in paths.items() if path}
    for key in keys:
        gens = runs.generations[key]
        lossless = _lossless(runs, key) if config.temperature <= 0 and key != PLAIN else None
        for category in categories:
            chosen = [g for g in gens if category in ("all", g.category)]
            label = key[1]
            row = {
                **common,
                "drafter": key[0],
                "drafter_path": paths.get(key[0]),
                "drafter_weights": weights.get(key[0]),
                "target": Path(config.model).name,
                "spec_type": "none" if key == PLAIN else kinds[key[0]],
                "strategy": "none" if key == PLAIN else kinds[key[0]],
                "n_max": 0 if key == PLAIN else "auto" if label == "auto" else options[key].n_max,
                "p_min": None if key == PLAIN else options[key].p_min,
                "category": category,
                **summarize(chosen, baseline[category]),
            }
            if lossless is not None:
                row["lossless"] = lossless
            rows.append(row)
    return rows


def _labels(runs: _Runs, group: str) -> list[str]:
    return [label for g, label in runs.generations if g == group]


def _per_rep(gens: list[Generation], category: str) -> dict[int, dict[str, Any]]:
    reps = sorted({g.rep for g in gens})
    return {r: summarize([g for g in gens if g.rep == r and category in ("all", g.category)]) for r in reps}


def _lossless(runs: _Runs, key: tuple[str, str]) -> bool:
    """Greedy only: every output equals plain decoding's for the same prompt and rep."""
    return runs.outputs[key] == runs.outputs[PLAIN]
