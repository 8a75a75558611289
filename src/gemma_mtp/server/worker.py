"""The model-owning worker: one thread runs every round of continuous batching.

Requests ("jobs") arrive through ``submit`` from any thread. Between rounds the worker drops
cancelled jobs (a disconnected client's slot is free before the next round), prefills waiting
jobs into free rows, then runs one ``BatchDecoder.step()``: a single target forward in which every
active row verifies its own drafts. Each job's ``deliver`` callback receives ``Tokens`` as rounds
commit them and then one ``Finished`` (or ``Failed``); the HTTP side points it at its event loop.
Waiting jobs beyond ``max_queue`` are refused with ``QueueFull``. Nothing else touches the decoder.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.batch import BatchDecoder, Slot
from ..errors import GemmaMTPError
from ..sampling import SamplingParams
from ..speculative.base import SpecOptions
from ..speculative.stats import SpecStats
from .metrics import Metrics, copy_stats, stats_delta

__all__ = ["Worker", "Job", "Tokens", "Finished", "Failed", "QueueFull", "WorkerStopped"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    ids: list[int]


@dataclass(frozen=True)
class Finished:
    stop_reason: str  # eos | length | context | cancelled
    n_prompt: int
    n_generated: int
    prompt_ms: float  # prefill and the round that sampled the first token
    predicted_ms: float  # every later round
    stats: SpecStats


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Tokens | Finished | Failed


class QueueFull(Exception):
    """Every slot is busy and ``max_queue`` requests already wait."""


class WorkerStopped(Exception):
    """The worker is stopping (server shutdown) or has stopped; the job will not run."""


@dataclass(eq=False)
class Job:
    """One generation request. ``deliver`` is called from the worker thread and must not block."""

    prompt_ids: list[int]
    n_predict: int
    sampling: SamplingParams
    spec: SpecOptions
    stop_ids: frozenset[int]
    deliver: Callable[[Event], None]  # called from the worker thread; must not block
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancelled: bool = False
    slot: Slot | None = None
    _reported: SpecStats = field(default_factory=SpecStats)


class Worker:
    def __init__(self, decoder: BatchDecoder, *, max_queue: int, metrics: Metrics | None = None) -> None:
        self.decoder = decoder
        self.n_slots = len(decoder.slots)
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []  # admitted jobs (their slot is set once prefilled)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gemma-mtp-worker", daemon=True)

    # -- any thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started: answer the waiting jobs here
            self._shutdown()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise WorkerStopped("the model worker is not running; restart the server")
            free = self.n_slots - len(self._running)
            if len(self._pending) >= free + self.max_queue:
                raise QueueFull(
                    f"all {self.n_slots} slots are busy and {len(self._pending)} requests wait "
                    f"(the queue holds {self.max_queue}); retry later"
                )
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (client gone, stop string hit); its slot is freed before the next round."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def snapshot(self) -> dict[str, Any]:
        """Slots and queue as they are now (for ``/slots``, ``/metrics`` and tests)."""
        with self._cond:
            by_row = {job.slot.row: job for job in self._running if job.slot is not None}
            slots = []
            for row in range(self.n_slots):
                job = by_row.get(row)
                slot = job.slot if job is not None else None
                slots.append(
                    {
                        "id": row,
                        "state": "processing" if job is not None else "idle",
                        "request_id": job.id if job is not None else None,
                        "n_prompt": slot.n_prompt if slot is not None else 0,
                        "n_generated": len(slot.tokens) - slot.n_prompt if slot is not None else 0,
                        "speculative": slot.spec.type if slot is not None else None,
                    }
                )
            return {
                "slots": slots,
                "running": len(self._running),
                "waiting": len(self._pending),
                "decoder_rows_in_use": sum(s is not None for s in self.decoder.slots),
            }

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not leave clients waiting forever
            log.exception("the model worker stopped")
        finally:
            self._shutdown()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._running:
                    self._cond.wait()
                if self._stopping:
                    break
                dropped = [job for job in self._pending if job.cancelled]
                for job in dropped:
                    self._pending.remove(job)
                cancelled = [job for job in self._running if job.cancelled]
                admitted = []
                while self._pending and len(self._running) + len(admitted) < self.n_slots + len(cancelled):
                    admitted.append(self._pending.popleft())
                self._running.extend(admitted)
            for job in dropped:
                _send(job, Finished("cancelled", len(job.prompt_ids), 0, 0.0, 0.0, SpecStats()))
            for job in cancelled:
                self._finish(job, "cancelled")
            for job in admitted:
                self._admit(job)
            self._round()

    def _admit(self, job: Job) -> None:
        try:
            job.slot = self.decoder.add(
                job.prompt_ids,
                n_predict=job.n_predict,
                sampling=job.sampling,
                spec=job.spec,
                stop_ids=job.stop_ids,
            )
        except Exception as exc:
            if not isinstance(exc, GemmaMTPError):
                log.exception("prefill of request %s failed", job.id)
            self._release_orphans()
            with self._cond:
                self._running.remove(job)
            _send(job, Failed(exc))
            return
        job._reported = SpecStats()
        self.metrics.tokens(prompt=len(job.prompt_ids))
        if job.slot.done:  # nothing to generate (max_tokens 0)
            self._finish(job, job.slot.stop_reason)

    def _round(self) -> None:
        jobs = {job.slot.row: job for job in self._running if job.slot is not None}
        if not jobs:
            return
        try:
            committed = self.decoder.step()
        except Exception as exc:
            # A failed forward leaves the rows in an unknown state: fail them all, keep serving.
            log.exception("decoding round failed; failing %d requests", len(jobs))
            for job in jobs.values():
                self._release(job)
                _send(job, Failed(exc))
            return
        generated = 0
        for row, ids in committed.items():
            job = jobs[row]
            generated += len(ids)
            if ids:
                _send(job, Tokens(ids))
            self._report_speculation(job)
            if job.slot.done:
                self._finish(job, job.slot.stop_reason)
        self.metrics.tokens(generated=generated)

    def _report_speculation(self, job: Job) -> None:
        stats = job.slot.stats
        if stats.drafted != job._reported.drafted:
            self.metrics.speculation(stats_delta(stats, job._reported))
            job._reported = copy_stats(stats)

    def _finish(self, job: Job, reason: str) -> None:
        slot = job.slot
        self._release(job)
        _send(
            job,
            Finished(
                stop_reason=reason,
                n_prompt=slot.n_prompt,
                n_generated=len(slot.generated),
                prompt_ms=slot.prompt_ms + slot.first_round_ms,
                predicted_ms=max(slot.decode_ms - slot.first_round_ms, 0.0),
                stats=slot.stats,
            ),
        )

    def _release(self, job: Job) -> None:
        if job.slot is not None and self.decoder.slots[job.slot.row] is job.slot:
            self.decoder.release(job.slot)
        with self._cond:
            if job in self._running:
                self._running.remove(job)

    def _release_orphans(self) -> None:
        """Free decoder rows that no job owns (a prefill that failed after taking its row)."""
        owned = {id(job.slot) for job in self._running if job.slot is not None}
        for slot in self.decoder.slots:
            if slot is not None and id(slot) not in owned:
                self.decoder.release(slot)

    def _shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            jobs = [*self._running, *self._pending]
            self._pending.clear()
        for job in jobs:
            if job.slot is not None:
                self._release(job)
            else:
                with self._cond:
                    if job in self._running:
                        self._running.remove(job)
            _send(job, Failed(WorkerStopped("the server is shutting down")))


def _send(job: Job, event: Event) -> None:
    try:
        job.deliver(event)
    except Exception:  # a broken callback must not take the worker (and every other request) down
        log.exception("delivering an event of request %s failed", job.id)
