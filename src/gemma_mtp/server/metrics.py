"""Server counters in Prometheus' text format, named as vLLM names them (prefix ``gemma_mtp:``).

The scheduler (on the worker thread) counts tokens and speculative statistics as each round
commits them; the HTTP side counts requests and errors. One lock guards everything; rendering takes a consistent copy.
"""

from __future__ import annotations

import threading
from collections import Counter

from ..speculative.stats import SpecStats

__all__ = ["Metrics", "PREFIX"]

PREFIX = "gemma_mtp:"

_HELP = {
    "requests_total": ("counter", "Generation requests received, by endpoint."),
    "request_errors_total": ("counter", "Requests answered with an error, by HTTP status."),
    "request_success_total": ("counter", "Finished generations, by finish reason."),
    "prompt_tokens_total": ("counter", "Prompt tokens prefilled."),
    "generation_tokens_total": ("counter", "Tokens generated."),
    "num_requests_running": ("gauge", "Requests holding a slot."),
    "num_requests_waiting": ("gauge", "Requests waiting for a slot."),
    "num_slots": ("gauge", "Slots (parallel sequences) of the worker."),
    "spec_decode_num_drafts_total": ("counter", "Verify passes that carried at least one draft."),
    "spec_decode_num_draft_tokens_total": ("counter", "Draft tokens proposed."),
    "spec_decode_num_accepted_tokens_total": ("counter", "Draft tokens accepted."),
    "spec_decode_num_accepted_tokens_per_pos_total": (
        "counter",
        "Draft tokens accepted, by position in the draft (0 = first).",
    ),
    "spec_decode_num_draft_tokens_per_pos_total": (
        "counter",
        "Draft tokens proposed, by position in the draft (0 = first).",
    ),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._errors: Counter[int] = Counter()
        self._finished: Counter[str] = Counter()
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._spec = SpecStats()

    def request(self, endpoint: str) -> None:
        with self._lock:
            self._requests[endpoint] += 1

    def error(self, status: int) -> None:
        with self._lock:
            self._errors[status] += 1

    def finished(self, reason: str) -> None:
        with self._lock:
            self._finished[reason] += 1

    def tokens(self, *, prompt: int = 0, generated: int = 0) -> None:
        with self._lock:
            self._prompt_tokens += prompt
            self._generation_tokens += generated

    def speculation(self, delta: SpecStats) -> None:
        with self._lock:
            self._spec.merge(delta)

    def render(self, gauges: dict[str, int] | None = None) -> str:
        """The exposition text; ``gauges`` are point-in-time values read by the caller."""
        with self._lock:
            samples: dict[str, list[tuple[str, float]]] = {
                "requests_total": _labelled("endpoint", self._requests),
                "request_errors_total": _labelled("code", self._errors),
                "request_success_total": _labelled("finished_reason", self._finished),
                "prompt_tokens_total": [("", self._prompt_tokens)],
                "generation_tokens_total": [("", self._generation_tokens)],
                "spec_decode_num_drafts_total": [("", self._spec.rounds)],
                "spec_decode_num_draft_tokens_total": [("", self._spec.drafted)],
                "spec_decode_num_accepted_tokens_total": [("", self._spec.accepted)],
                "spec_decode_num_accepted_tokens_per_pos_total": _by_position(
                    self._spec.accepted_by_position
                ),
                "spec_decode_num_draft_tokens_per_pos_total": _by_position(self._spec.drafted_by_position),
            }
        for name, value in (gauges or {}).items():
            samples[name] = [("", value)]
        lines = []
        for name, (kind, text) in _HELP.items():
            if name not in samples:
                continue
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            lines += [f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples[name]]
        return "\n".join(lines) + "\n"


def _labelled(label: str, counts: Counter) -> list[tuple[str, float]]:
    return [(f'{{{label}="{_escape(str(key))}"}}', value) for key, value in sorted(counts.items())]


def _by_position(counts: list[int]) -> list[tuple[str, float]]:
    return [(f'{{position="{i}"}}', value) for i, value in enumerate(counts)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
