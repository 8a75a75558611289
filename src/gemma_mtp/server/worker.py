"""The model-owning worker: one thread runs every round of continuous batching.

Admission, cancellation and the queue are the engine's ``Scheduler``; the worker adds the thread.
Requests ("jobs") arrive through ``submit`` from any thread; the worker thread sleeps until there
is work, then calls ``Scheduler.step()`` round after round and hands each event to its job's
``deliver`` callback: ``Tokens`` as rounds commit them, then one ``Finished`` (or ``Failed``). The
HTTP side points ``deliver`` at its event loop. Nothing else touches the decoder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.batch import BatchDecoder
from ..engine.scheduler import Event, Failed, Finished, QueueFull, Scheduler, Tokens
from ..engine.scheduler import Job as SchedulerJob
from .metrics import Metrics

__all__ = ["Worker", "Job", "Tokens", "Finished", "Failed", "QueueFull", "WorkerStopped"]

log = logging.getLogger(__name__)


class WorkerStopped(Exception):
    """The worker is stopping (server shutdown) or has stopped; the job will not run."""


@dataclass(eq=False, kw_only=True)
class Job(SchedulerJob):
    """A scheduler job and where its events go."""

    deliver: Callable[[Event], None]  # called from the worker thread; must not block


class Worker:
    def __init__(self, decoder: BatchDecoder, *, max_queue: int, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition(threading.RLock())  # the scheduler takes it again inside
        self.scheduler = Scheduler(decoder, max_queue=max_queue, metrics=self.metrics, guard=self._cond)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gemma-mtp-worker", daemon=True)

    @property
    def decoder(self) -> BatchDecoder:
        return self.scheduler.decoder

    @property
    def n_slots(self) -> int:
        return self.scheduler.n_slots

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
            self.scheduler.submit(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (client gone, stop string hit); its slot is freed before the next round."""
        with self._cond:
            self.scheduler.cancel(job)
            self._cond.notify()

    def snapshot(self) -> dict[str, Any]:
        """Slots and queue as they are now (for ``/slots``, ``/metrics`` and tests)."""
        return self.scheduler.snapshot()

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
                while not self._stopping and self.scheduler.idle:
                    self._cond.wait()
                if self._stopping:
                    break
            _send_all(self.scheduler.step())

    def _shutdown(self) -> None:
        with self._cond:
            self._stopping = True
        _send_all(self.scheduler.fail_all(WorkerStopped("the server is shutting down")))


def _send_all(events: list[tuple[Job, Event]]) -> None:
    for job, event in events:
        try:
            job.deliver(event)
        except Exception:  # a broken callback must not take the worker (and every other request) down
            log.exception("delivering an event of request %s failed", job.id)
