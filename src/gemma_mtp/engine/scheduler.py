"""Continuous batching without threads: admission, cancellation and the queue around a BatchDecoder.

The scheduler owns the decoder's rows. Requests ("jobs") wait in a bounded queue (``submit``;
beyond ``max_queue`` waiting behind busy rows: ``QueueFull``). Each ``step`` first drops cancelled
jobs (a waiting one never takes a row, a running one frees its row), prefills waiting jobs into
free rows, then runs one ``BatchDecoder.step()``: a single target forward in which every active
row verifies its own drafts. It returns what happened to each job, in order: ``Tokens`` as rounds
commit them, then one ``Finished`` (or ``Failed``).

Who calls ``step`` and delivers the events is the caller's business (the server's worker runs it
in a thread). A caller that submits or cancels from other threads passes a ``guard`` (a lock, held
around every change to the queue and the running list; it must be reentrant); the decoder itself
is only ever touched by ``step``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import GemmaMTPError
from ..speculative.stats import SpecStats
from .results import slot_timings

if TYPE_CHECKING:
    from ..media.prompt import PromptMedia
    from ..sampling import SamplingParams
    from ..speculative.base import SpecOptions
    from .batch import BatchDecoder, Slot

__all__ = [
    "Scheduler",
    "Job",
    "Tokens",
    "Finished",
    "Failed",
    "Event",
    "QueueFull",
    "SchedulerMetrics",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    """The ids one round committed for a job: the first ``n_from_draft`` are drafts the target
    accepted, the rest (one, unless the round was cut at a stop or the budget) the target's own.
    ``drafted``/``accepted``: the round's draft length and how many of them the acceptance rule
    kept (what ``SpecStats`` counts; ``accepted`` can exceed ``n_from_draft`` when cut)."""

    ids: list[int]
    drafted: int = 0
    accepted: int = 0

    @property
    def n_from_draft(self) -> int:
        return min(self.accepted, len(self.ids))


@dataclass(frozen=True)
class Finished:
    stop_reason: str  # eos | length | context | stop (a stop string) | cancelled
    n_prompt: int
    n_generated: int
    prompt_ms: float  # prefill and the round that sampled the first token
    predicted_ms: float  # every later round
    stats: SpecStats
    predicted_n: int = 0  # tokens those later rounds committed (the first round may commit several)


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Tokens | Finished | Failed


class QueueFull(Exception):
    """Every row is busy and ``max_queue`` requests already wait."""


class SchedulerMetrics(Protocol):
    """Where the scheduler counts what it does (the server's ``Metrics``)."""

    def tokens(self, *, prompt: int = 0, generated: int = 0) -> None: ...

    def speculation(self, delta: SpecStats) -> None: ...


@dataclass(eq=False, kw_only=True)
class Job:
    """One generation request.

    ``stop_check``, when given, sees each round's committed ids (in order, across rounds) and
    returns how many of them end the request: the count up to and including the token that
    completed a stop string. The job then finishes with ``stop`` and those tokens only.
    """

    prompt_ids: list[int]
    n_predict: int
    sampling: SamplingParams
    spec: SpecOptions
    stop_ids: frozenset[int]
    stop_check: Callable[[list[int]], int | None] | None = None
    # soft tokens for the prompt's media slots (`Engine.media_encoder().prepare`)
    media: PromptMedia | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancelled: bool = False
    slot: Slot | None = None
    _reported: SpecStats = field(default_factory=SpecStats)  # speculation already counted in metrics


class Scheduler:
    def __init__(
        self,
        decoder: BatchDecoder,
        *,
        max_queue: int,
        metrics: SchedulerMetrics | None = None,
        guard: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self.decoder = decoder
        self.n_slots = len(decoder.slots)
        self.max_queue = max_queue
        self.metrics = metrics
        self._guard = guard if guard is not None else contextlib.nullcontext()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []  # admitted jobs (their slot is set once prefilled)

    # -- queue (any thread, under the guard) -----------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; ``QueueFull`` when every row is taken and ``max_queue`` jobs wait."""
        with self._guard:
            free = self.n_slots - len(self._running)
            if len(self._waiting) >= free + self.max_queue:
                raise QueueFull(
                    f"all {self.n_slots} slots are busy and {len(self._waiting)} requests wait "
                    f"(the queue holds {self.max_queue}); retry later"
                )
            self._waiting.append(job)

    def cancel(self, job: Job) -> None:
        """Stop a job (client gone): the next ``step`` drops it if it waits, frees its row if it runs."""
        job.cancelled = True

    @property
    def idle(self) -> bool:
        """No job waits or runs: ``step`` has nothing to do."""
        with self._guard:
            return not self._waiting and not self._running

    def snapshot(self) -> dict[str, Any]:
        """Slots and queue as they are now (for ``/slots``, ``/metrics`` and tests)."""
        with self._guard:
            by_row = {job.slot.row: job for job in self._running if job.slot is not None}
            slots = [_slot_state(row, by_row.get(row)) for row in range(self.n_slots)]
            return {
                "slots": slots,
                "running": len(self._running),
                "waiting": len(self._waiting),
                "decoder_rows_in_use": sum(s is not None for s in self.decoder.slots),
            }

    # -- the decoding side (one caller at a time) --------------------------------------------------
    def step(self) -> list[tuple[Job, Event]]:
        """Drop cancelled jobs, admit waiting ones into free rows, run one round."""
        with self._guard:
            dropped = [job for job in self._waiting if job.cancelled]
            for job in dropped:
                self._waiting.remove(job)
            cancelled = [job for job in self._running if job.cancelled]
            admitted = []
            while self._waiting and len(self._running) - len(cancelled) + len(admitted) < self.n_slots:
                admitted.append(self._waiting.popleft())
            self._running.extend(admitted)
        events: list[tuple[Job, Event]] = []
        for job in dropped:
            events.append((job, Finished("cancelled", len(job.prompt_ids), 0, 0.0, 0.0, SpecStats())))
        for job in cancelled:
            events.append(self._finish(job, "cancelled"))
        for job in admitted:
            events += self._admit(job)
        events += self._round()
        return events

    def fail_all(self, error: Exception) -> list[tuple[Job, Event]]:
        """Release every row and empty the queue; each job gets ``Failed(error)`` (shutdown)."""
        with self._guard:
            jobs = [*self._running, *self._waiting]
            self._waiting.clear()
        for job in jobs:
            self._release(job)
        return [(job, Failed(error)) for job in jobs]

    def _admit(self, job: Job) -> list[tuple[Job, Event]]:
        try:
            job.slot = self.decoder.add(
                job.prompt_ids,
                n_predict=job.n_predict,
                sampling=job.sampling,
                spec=job.spec,
                stop_ids=job.stop_ids,
                **({"media": job.media} if job.media else {}),
            )
        except Exception as exc:
            if not isinstance(exc, GemmaMTPError):
                log.exception("prefill of request %s failed", job.id)
            self._release_orphans()
            self._release(job)
            return [(job, Failed(exc))]
        job._reported = SpecStats()
        self._count(prompt=len(job.prompt_ids))
        if job.slot.done:  # nothing to generate (max_tokens 0)
            return [self._finish(job, job.slot.stop_reason)]
        return []

    def _round(self) -> list[tuple[Job, Event]]:
        jobs = {job.slot.row: job for job in self._running if job.slot is not None}
        if not jobs:
            return []
        try:
            committed = self.decoder.step()
        except Exception as exc:
            # A failed forward leaves the rows in an unknown state: fail them all, keep serving.
            log.exception("decoding round failed; failing %d requests", len(jobs))
            for job in jobs.values():
                self._release(job)
            return [(job, Failed(exc)) for job in jobs.values()]
        events: list[tuple[Job, Event]] = []
        generated = 0
        for row, ids in committed.items():
            job = jobs[row]
            ids = self._cut_at_stop(job, ids)
            generated += len(ids)
            if ids:
                drafted, accepted = job.slot.last_round
                events.append((job, Tokens(ids, drafted, accepted)))
            self._report_speculation(job)
            if job.slot.done:
                events.append(self._finish(job, job.slot.stop_reason))
        self._count(generated=generated)
        return events

    def _cut_at_stop(self, job: Job, ids: list[int]) -> list[int]:
        """The ids up to the one that completed a stop string (the slot ends there), else all."""
        if job.stop_check is None or not ids:
            return ids
        keep = job.stop_check(ids)
        if keep is None:
            return ids
        slot = job.slot
        del slot.tokens[len(slot.tokens) - (len(ids) - keep) :]
        slot.stop_reason = "stop"
        return ids[:keep]

    def _report_speculation(self, job: Job) -> None:
        stats = job.slot.stats
        if self.metrics is not None and stats.drafted != job._reported.drafted:
            self.metrics.speculation(stats.since(job._reported))
            job._reported = stats.counts()

    def _count(self, *, prompt: int = 0, generated: int = 0) -> None:
        if self.metrics is not None:
            self.metrics.tokens(prompt=prompt, generated=generated)

    def _finish(self, job: Job, reason: str) -> tuple[Job, Finished]:
        slot = job.slot
        self._release(job)
        timings = slot_timings(slot)
        finished = Finished(
            stop_reason=reason,
            n_prompt=slot.n_prompt,
            n_generated=len(slot.generated),
            prompt_ms=timings.prompt_ms,
            predicted_ms=timings.decode_ms,
            stats=slot.stats,
            predicted_n=timings.decode_tokens,
        )
        return job, finished

    def _release(self, job: Job) -> None:
        if job.slot is not None and self.decoder.slots[job.slot.row] is job.slot:
            self.decoder.release(job.slot)
        with self._guard:
            if job in self._running:
                self._running.remove(job)

    def _release_orphans(self) -> None:
        """Free decoder rows that no job owns (a prefill that failed after taking its row)."""
        owned = {id(job.slot) for job in self._running if job.slot is not None}
        for slot in self.decoder.slots:
            if slot is not None and id(slot) not in owned:
                self.decoder.release(slot)


def _slot_state(row: int, job: Job | None) -> dict[str, Any]:
    slot = job.slot if job is not None else None
    return {
        "id": row,
        "state": "processing" if job is not None else "idle",
        "request_id": job.id if job is not None else None,
        "n_prompt": slot.n_prompt if slot is not None else 0,
        "n_generated": len(slot.generated) if slot is not None else 0,
        "speculative": slot.spec.type if slot is not None else None,
    }
