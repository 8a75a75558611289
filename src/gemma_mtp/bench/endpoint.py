"""`bench --endpoint URL`: the same prompts against any OpenAI-compatible server (ours,
llama-server, vLLM), so that engines can be compared with one tool.

Each prompt is one streamed `POST /v1/completions` (with --chat, text prompts go as one user message
to `POST /v1/chat/completions`, thinking set by --reasoning through `chat_template_kwargs`). Decode speed comes from the server's own
`timings` (`predicted_per_second` over `predicted_ms`: llama-server's names, ours too) when it reports them, else from the client
clock: tokens after the first over the time from the first streamed token to the last. Acceptance
comes from `timings.draft_n` / `timings.draft_n_accepted` (llama-server's names) and, where the
server exposes Prometheus `/metrics`, from the difference of its speculative counters around each
request (`*spec_decode_num_draft_tokens_total`, `*_num_accepted_tokens_total`, `*_num_drafts_total`,
`*_num_accepted_tokens_per_pos_total{position=...}`; vLLM's names, any prefix; ours add
`*_num_draft_tokens_per_pos_total`). A draft length given with --n-max is sent both as llama-server's
`"speculative.n_max"` and as ours, `"speculative": {"n_max": N}`.
With several endpoints, the first one is the baseline of the speedup column (list the server
without speculation first).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import GemmaMTPError, UsageError
from .prompts import BenchPrompt, load_prompts
from .provenance import git_commit, timestamp
from .stats import Generation, summarize

__all__ = ["EndpointConfig", "run_endpoint_bench", "complete", "parse_metrics", "spec_counters"]


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    endpoints: tuple[str, ...]
    model: str | None = None  # the "model" field of the request; None: the server's default
    n_max: tuple[
        int, ...
    ] = ()  # per-request draft lengths ("speculative.n_max", llama-server); () = server's
    reps: int = 3
    prompts: str = "builtin"
    n_predict: int = 200
    temperature: float = 0.3
    seed: int = 0
    timeout_s: float = 600.0
    api_key: str | None = None
    chat: bool = False  # text prompts as one user message through POST /v1/chat/completions
    reasoning: str = "auto"  # on | off: chat_template_kwargs.enable_thinking (llama-server, vLLM, ours)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise UsageError("--endpoint needs a URL, e.g. http://127.0.0.1:8080")
        if self.reps < 1:
            raise UsageError(f"--reps must be >= 1, got {self.reps}")


@dataclass(frozen=True)
class Completion:
    n_tokens: int  # tokens the decode rate counts
    decode_ms: float
    timing_source: str  # "server" or "client"
    timings: dict[str, Any]


def _request(url: str, body: dict | None, config: EndpointConfig) -> urllib.request.Request:
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    data = None if body is None else json.dumps(body).encode()
    return urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")


def _sse(response) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def complete(base_url: str, prompt: str | list[int], *, config: EndpointConfig, seed: int, n_max: int | None):
    """One streamed completion; returns `Completion` with the decode rate and any server timings."""
    chat = config.chat and isinstance(prompt, str)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    if chat and config.reasoning in ("on", "off"):
        body["chat_template_kwargs"] = {"enable_thinking": config.reasoning == "on"}
    body |= {
        "max_tokens": config.n_predict,
        "temperature": config.temperature,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.model:
        body["model"] = config.model
    if n_max is not None:
        body["speculative.n_max"] = n_max  # llama-server's per-request knob
        body["speculative"] = {"n_max": n_max}  # ours
    url = base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    stamps: list[float] = []
    timings: dict[str, Any] = {}
    usage_tokens = None
    try:
        with urllib.request.urlopen(_request(url, body, config), timeout=config.timeout_s) as response:
            for chunk in _sse(response):
                now = time.perf_counter()
                if any(
                    c.get("text") or (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
                ):
                    stamps.append(now)
                timings = chunk.get("timings") or timings
                usage = chunk.get("usage") or {}
                usage_tokens = usage.get("completion_tokens", usage_tokens)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise GemmaMTPError(f"--endpoint {base_url}: the completion request failed ({exc})") from None
    if timings.get("predicted_per_second") and timings.get("predicted_ms"):
        # the server's own rate, whatever it counts (llama-server: all tokens; ours: after the first)
        n_tokens = round(float(timings["predicted_per_second"]) * float(timings["predicted_ms"]) / 1e3)
        return Completion(n_tokens, float(timings["predicted_ms"]), "server", timings)
    n_tokens = int(usage_tokens) if usage_tokens is not None else len(stamps)
    decode_ms = (stamps[-1] - stamps[0]) * 1e3 if len(stamps) > 1 else 0.0
    return Completion(n_tokens, decode_ms, "client", timings)


_METRIC = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+([-+0-9.eE]+|NaN|[+-]Inf)\s*$")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted labels): value} (comments skipped)."""
    out = {}
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        if m is None:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def spec_counters(metrics: dict) -> dict[str, Any]:
    """The speculative counters of a scrape, whatever their prefix (`vllm:`, ...)."""
    out: dict[str, Any] = {
        "drafted": 0.0,
        "accepted": 0.0,
        "rounds": 0.0,
        "by_position": {},
        "drafted_by_position": {},
    }
    names = {
        "spec_decode_num_draft_tokens_total": "drafted",
        "spec_decode_num_accepted_tokens_total": "accepted",
        "spec_decode_num_drafts_total": "rounds",
    }
    per_position = {
        "spec_decode_num_accepted_tokens_per_pos_total": "by_position",
        "spec_decode_num_draft_tokens_per_pos_total": "drafted_by_position",  # ours; vLLM has none
    }
    for (name, labels), value in metrics.items():
        base = name.rsplit(":", 1)[-1]
        if base in names:
            out[names[base]] += value
        elif base in per_position:
            counts = out[per_position[base]]
            position = int(dict(labels).get("position", 0))
            counts[position] = counts.get(position, 0.0) + value
    return out


def _scrape(base_url: str, config: EndpointConfig) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(
            _request(base_url.rstrip("/") + "/metrics", None, config), timeout=10
        ) as r:
            return spec_counters(parse_metrics(r.read().decode("utf-8", "replace")))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _delta(before: dict[int, float], after: dict[int, float]) -> tuple[int, ...]:
    return tuple(int(after[p] - before.get(p, 0.0)) for p in sorted(after))


def _generation(done: Completion, before, after, prompt: BenchPrompt, rep: int) -> Generation:
    drafted = int(done.timings.get("draft_n", 0))
    accepted = int(done.timings.get("draft_n_accepted", 0))
    rounds, by_pos, dr_pos = 0, (), ()
    if before is not None and after is not None:
        diff = {k: after[k] - before[k] for k in ("drafted", "accepted", "rounds")}
        drafted, accepted = drafted or int(diff["drafted"]), accepted or int(diff["accepted"])
        rounds = int(diff["rounds"])
        by_pos = _delta(before["by_position"], after["by_position"])
        dr_pos = _delta(before["drafted_by_position"], after["drafted_by_position"])
        if by_pos and not dr_pos and rounds:
            # vLLM and llama-server count no drafts per position: every round is taken to draft
            # every position (a round cut short by the token budget makes the last positions' rate low)
            dr_pos = (rounds,) * len(by_pos)
    return Generation(
        category=prompt.category,
        rep=rep,
        n_decoded=max(done.n_tokens - 1, 0) if done.timing_source == "client" else done.n_tokens,
        decode_ms=done.decode_ms,
        drafted=drafted,
        accepted=accepted,
        rounds=rounds,
        accepted_by_position=by_pos,
        drafted_by_position=dr_pos,
    )


def run_endpoint_bench(
    config: EndpointConfig, *, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    say = progress or (lambda message: None)
    prompts = load_prompts(config.prompts)
    with_media = next((n for n, p in enumerate(prompts, 1) if p.has_media), None)
    if with_media is not None:  # (they are not sent as content parts yet: the numbers would be text-only)
        raise UsageError(
            f"--endpoint: prompt {with_media} of --prompts carries images or audio; media prompts are "
            "benched locally (-m), not against an endpoint"
        )
    settings: list[int | None] = list(config.n_max) or [None]
    runs: dict[tuple[str, int | None], list[Generation]] = {}
    sources: dict[str, str] = {}
    has_metrics = {url: _scrape(url, config) is not None for url in config.endpoints}
    for rep in range(config.reps):
        for url in config.endpoints:
            for n in settings:
                say(f"rep {rep + 1}/{config.reps}: {url}" + (f" n_max={n}" if n is not None else ""))
                for index, prompt in enumerate(prompts):
                    text = prompt.prompt if prompt.is_text else list(prompt.prompt)
                    before = _scrape(url, config) if has_metrics[url] else None
                    done = complete(url, text, config=config, seed=config.seed + 1000 * rep + index, n_max=n)
                    after = _scrape(url, config) if has_metrics[url] else None
                    sources[url] = done.timing_source
                    runs.setdefault((url, n), []).append(_generation(done, before, after, prompt, rep))
    return _rows(config, prompts, runs, sources)


def _rows(config, prompts, runs, sources) -> list[dict[str, Any]]:
    first = runs[(config.endpoints[0], (list(config.n_max) or [None])[0])]
    categories = ["all", *dict.fromkeys(p.category for p in prompts)]
    common = {
        "mode": "endpoint",
        "git_commit": git_commit(),
        "timestamp": timestamp(),
        "flags": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items() if k != "api_key"
        },
        "n_predict": config.n_predict,
        "temperature": config.temperature,
    }
    rows = []
    for (url, n), gens in runs.items():
        for category in categories:
            pick = [g for g in gens if category in ("all", g.category)]
            base = {
                rep: summarize([g for g in first if g.rep == rep and category in ("all", g.category)])[
                    "tokens_per_s"
                ]
                for rep in range(config.reps)
            }
            rows.append(
                {
                    **common,
                    "device": f"endpoint: {url}",
                    "model": config.model or url,
                    "drafter": url,
                    "spec_type": "server",
                    "n_max": "server" if n is None else n,
                    "category": category,
                    "timing_source": sources.get(url),
                    **summarize(pick, base),
                }
            )
    return rows
