"""The engine's `Scheduler` driven by hand, without threads: the queue bound, admission into free
rows, cancellation of waiting and running jobs, stop checks, failures, metrics and the slot
timings. The decoder is a real `BatchDecoder` on the tiny random e2b target (with its MTP
assistant and the n-gram drafter); each job's tokens are compared with the same prompt decoded
alone by the decoder."""

from __future__ import annotations

import hf_reference as ref
import pytest

from gemma_mtp.engine.batch import BatchDecoder, Slot
from gemma_mtp.engine.results import slot_timings
from gemma_mtp.engine.scheduler import Failed, Finished, Job, QueueFull, Scheduler, Tokens
from gemma_mtp.errors import ContextOverflowError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.speculative.mtp import MTPDrafter
from gemma_mtp.speculative.ngram import NgramDrafter
from gemma_mtp.speculative.stats import SpecStats

GREEDY = SamplingParams(temperature=0)
PLAIN = SpecOptions()
CTX = 64
PROMPTS = [[2, 5, 7, 9, 11], [2, 14, 6, 6, 8, 3], [2, 9, 4, 9, 4], [2, 3]]
SPECS = [SpecOptions(type="mtp", n_max=3), SpecOptions(), SpecOptions(type="ngram", n_max=2), SpecOptions()]


@pytest.fixture(scope="module")
def models(reference_models):
    target, _ = ref.load_ours(reference_models.target("e2b").path)
    assistant, _ = ref.load_ours(reference_models.assistant("e2b", ordered=True).path)
    return target, assistant


def make_decoder(models, rows: int) -> BatchDecoder:
    target, assistant = models
    decoder = BatchDecoder(target, max_batch=rows, ctx_size=CTX)
    decoder.drafters = {"mtp": MTPDrafter(target, assistant, decoder.cache), "ngram": NgramDrafter()}
    return decoder


@pytest.fixture(scope="module")
def alone(models):
    """Greedy tokens of a prompt decoded by a one-row decoder without speculation."""
    decoder = BatchDecoder(models[0], max_batch=1, ctx_size=CTX)

    def run(prompt: list[int], n: int) -> list[int]:
        slot = decoder.add(prompt, n_predict=n, sampling=GREEDY, spec=SpecOptions(), stop_ids=frozenset())
        while not slot.done:
            decoder.step()
        decoder.release(slot)
        return slot.generated

    return run


class CountingMetrics:
    def __init__(self) -> None:
        self.prompt = self.generated = 0
        self.spec = SpecStats()

    def tokens(self, *, prompt: int = 0, generated: int = 0) -> None:
        self.prompt += prompt
        self.generated += generated

    def speculation(self, delta: SpecStats) -> None:
        self.spec.merge(delta)


def job(prompt: list[int], n: int, spec: SpecOptions = PLAIN, **kwargs) -> Job:
    return Job(prompt_ids=prompt, n_predict=n, sampling=GREEDY, spec=spec, stop_ids=frozenset(), **kwargs)


def run_until_idle(scheduler: Scheduler, max_steps: int = 500) -> dict[Job, tuple[list[int], list]]:
    """Step until nothing waits or runs: per job, (tokens received, final events)."""
    out: dict[Job, tuple[list[int], list]] = {}
    for _ in range(max_steps):
        if scheduler.idle:
            return out
        for j, event in scheduler.step():
            tokens, ends = out.setdefault(j, ([], []))
            assert not ends, f"an event after the end of job {j.id}: {event}"
            if isinstance(event, Tokens):
                tokens += event.ids
            else:
                ends.append(event)
    raise AssertionError("the scheduler did not become idle")


def test_jobs_beyond_the_rows_wait_then_each_decodes_as_if_alone(models, alone):
    metrics = CountingMetrics()
    scheduler = Scheduler(make_decoder(models, rows=2), max_queue=4, metrics=metrics)
    jobs = [job(p, 6 + i, spec) for i, (p, spec) in enumerate(zip(PROMPTS, SPECS, strict=True))]
    for j in jobs:
        scheduler.submit(j)
    assert scheduler.snapshot()["waiting"] == 4
    out = run_until_idle(scheduler)
    for i, j in enumerate(jobs):
        tokens, (end,) = out[j]
        assert tokens == alone(PROMPTS[i], 6 + i), f"job {i}"
        assert isinstance(end, Finished) and end.stop_reason == "length"
        assert (end.n_prompt, end.n_generated) == (len(PROMPTS[i]), len(tokens))
    assert metrics.prompt == sum(map(len, PROMPTS))
    assert metrics.generated == sum(len(out[j][0]) for j in jobs)
    finished = [out[j][1][0] for j in jobs]
    assert metrics.spec.drafted == sum(end.stats.drafted for end in finished) > 0
    assert metrics.spec.accepted == sum(end.stats.accepted for end in finished)
    assert scheduler.snapshot()["decoder_rows_in_use"] == 0


def test_the_queue_holds_free_rows_plus_max_queue(models):
    scheduler = Scheduler(make_decoder(models, rows=2), max_queue=1)
    for _ in range(3):
        scheduler.submit(job([2, 3], 4))
    with pytest.raises(QueueFull, match="retry later"):
        scheduler.submit(job([2, 3], 4))


def test_a_cancelled_waiting_job_ends_without_taking_a_row(models):
    scheduler = Scheduler(make_decoder(models, rows=1), max_queue=2)
    waiting = job([2, 5], 4)
    scheduler.submit(waiting)
    scheduler.cancel(waiting)
    events = scheduler.step()
    assert [(j, type(e)) for j, e in events] == [(waiting, Finished)]
    end = events[0][1]
    assert (end.stop_reason, end.n_generated) == ("cancelled", 0)
    assert scheduler.idle and scheduler.snapshot()["decoder_rows_in_use"] == 0


def test_cancelling_a_running_job_frees_its_row_for_a_waiting_one(models, alone):
    scheduler = Scheduler(make_decoder(models, rows=1), max_queue=2)
    running, waiting = job(PROMPTS[0], 30), job(PROMPTS[1], 5)
    scheduler.submit(running)
    scheduler.submit(waiting)
    received = []
    for _ in range(2):
        received += [e.ids for j, e in scheduler.step() if j is running and isinstance(e, Tokens)]
    snapshot = scheduler.snapshot()
    assert snapshot["slots"][0]["request_id"] == running.id and snapshot["waiting"] == 1
    scheduler.cancel(running)
    events = scheduler.step()
    (end,) = [e for j, e in events if j is running]
    assert end.stop_reason == "cancelled"
    assert end.n_generated == sum(map(len, received))
    assert scheduler.snapshot()["slots"][0]["request_id"] == waiting.id
    first = [t for j, e in events if j is waiting and isinstance(e, Tokens) for t in e.ids]
    assert first + run_until_idle(scheduler)[waiting][0] == alone(PROMPTS[1], 5)


def test_a_stop_check_ends_the_job_at_the_token_it_names(models, alone):
    full = alone(PROMPTS[0], 12)
    seen: list[int] = []

    def stop_after_five(ids: list[int]) -> int | None:
        """Like a stop string completed by the fifth generated token."""
        before = len(seen)
        seen.extend(ids)
        return 5 - before if len(seen) >= 5 else None

    metrics = CountingMetrics()
    scheduler = Scheduler(make_decoder(models, rows=1), max_queue=0, metrics=metrics)
    stopped = job(PROMPTS[0], 12, SpecOptions(type="mtp", n_max=3), stop_check=stop_after_five)
    scheduler.submit(stopped)
    tokens, (end,) = run_until_idle(scheduler)[stopped]
    assert tokens == full[:5]
    assert (end.stop_reason, end.n_generated) == ("stop", 5)
    assert metrics.generated == 5
    assert scheduler.snapshot()["decoder_rows_in_use"] == 0


def test_a_failed_prefill_fails_its_job_and_the_others_run_on(models, alone):
    scheduler = Scheduler(make_decoder(models, rows=2), max_queue=2)
    too_long, fine = job([2] * (CTX + 1), 4), job(PROMPTS[3], 4)
    scheduler.submit(too_long)
    scheduler.submit(fine)
    out = run_until_idle(scheduler)
    (failure,) = out[too_long][1]
    assert isinstance(failure, Failed) and isinstance(failure.error, ContextOverflowError)
    assert out[fine][0] == alone(PROMPTS[3], 4)
    assert scheduler.snapshot()["decoder_rows_in_use"] == 0


def test_fail_all_releases_every_row_and_empties_the_queue(models):
    scheduler = Scheduler(make_decoder(models, rows=1), max_queue=2)
    jobs = [job(PROMPTS[0], 20), job(PROMPTS[1], 20)]
    for j in jobs:
        scheduler.submit(j)
    scheduler.step()
    error = RuntimeError("shutting down")
    events = scheduler.fail_all(error)
    assert [(j, e) for j, e in events] == [(jobs[0], Failed(error)), (jobs[1], Failed(error))]
    assert scheduler.idle and scheduler.snapshot()["decoder_rows_in_use"] == 0


def test_slot_timings_split_prefill_and_first_round_from_later_rounds():
    slot = Slot(
        row=0,
        tokens=[2, 3, 4, 10, 11, 12, 13],
        n_prompt=3,
        budget=0,
        sampling=GREEDY,
        spec=SpecOptions(),
        stop_ids=frozenset(),
        generator=None,
        prompt_ms=20.0,
        first_round_ms=5.0,
        decode_ms=35.0,
    )
    timings = slot_timings(slot, load_s=1.5)
    assert (timings.load_s, timings.prompt_ms, timings.decode_ms) == (1.5, 25.0, 30.0)
    assert timings.decode_tokens_per_s == pytest.approx(3 / 0.030)  # 3 tokens after the first


def test_tokens_the_first_round_commits_are_not_counted_in_the_decode_rate(models):
    """With MTP the first round already verifies drafts (the prefill left the hidden state), so it
    can commit several tokens; they arrive within prompt_ms, so the rate must leave them out."""
    from gemma_mtp.speculative.synthetic import SyntheticAcceptance

    decoder = make_decoder(models, rows=1)
    spec = SpecOptions(type="mtp", n_max=3, synthetic=SyntheticAcceptance(rates=(1.0, 1.0, 1.0), seed=0))
    slot = decoder.add(PROMPTS[0], n_predict=13, sampling=GREEDY, spec=spec, stop_ids=frozenset())
    decoder.step()
    first = len(slot.generated)
    assert slot.first_round_tokens == first == 4  # every draft imposed accepted: 3 drafts + 1
    while not slot.done:
        decoder.step()
    timings = slot_timings(slot)
    assert timings.decode_tokens_per_s * timings.decode_ms / 1e3 == pytest.approx(len(slot.generated) - first)
    decoder.release(slot)
