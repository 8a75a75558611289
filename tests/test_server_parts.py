"""The server's parts without HTTP or a model: stop strings, request validation, speculative
options, Prometheus text, and the worker's queue, cancellation and failure handling (on a decoder
that counts instead of running a model)."""

from __future__ import annotations

import argparse
import queue

import pytest
import server_model

pytest.importorskip("pydantic")

from gemma_mtp.cli.spec_args import SpecFlags  # noqa: E402
from gemma_mtp.engine.batch import Slot  # noqa: E402
from gemma_mtp.errors import UsageError  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.server.cli import add_serve_arguments, settings_from_args  # noqa: E402
from gemma_mtp.server.metrics import Metrics  # noqa: E402
from gemma_mtp.server.schemas import (  # noqa: E402
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    SpeculativeField,
    parse_request,
    spec_options,
)
from gemma_mtp.server.settings import ServerSettings  # noqa: E402
from gemma_mtp.server.text import StopCheck, StopStrings  # noqa: E402
from gemma_mtp.server.worker import Failed, Finished, Job, QueueFull, Tokens, Worker, WorkerStopped  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402
from gemma_mtp.speculative.stats import SpecStats  # noqa: E402

# ---------------------------------------------------------------------------------------------
# stop strings


def feed_all(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    matcher = StopStrings(stops)
    out = [matcher.feed(piece) for piece in pieces]
    return [*out, matcher.flush()], matcher.hit


def test_stop_string_split_across_pieces_never_leaks():
    out, hit = feed_all(["</end>"], ["hello </", "en", "d> more"])
    assert out == ["hello ", "", "", ""] and hit


def test_a_held_back_prefix_that_turns_out_not_to_stop_is_released():
    out, hit = feed_all(["</end>"], ["a </", "b"])
    assert "".join(out) == "a </b" and not hit


def test_the_earliest_of_several_stop_strings_wins():
    out, hit = feed_all(["world", "lo"], ["hello world"])
    assert out[0] == "hel" and hit


def test_no_stop_strings_pass_text_through():
    assert feed_all([], ["a", "b"]) == (["a", "b", ""], False)


@pytest.mark.parametrize("round_size", [1, 2, 5])
def test_stop_check_names_the_token_that_completes_the_stop_string(round_size):
    tokenizer = server_model.tiny_tokenizer()
    ids = tokenizer.encode("say hello world and more", add_bos=False)
    expected = next(k for k in range(1, len(ids) + 1) if "lo wor" in tokenizer.decode(ids[:k]))
    check = StopCheck(tokenizer, ["zzz", "lo wor"], skip_ids=frozenset())
    for start in range(0, len(ids), round_size):
        keep = check(ids[start : start + round_size])
        if keep is not None:
            break
    assert keep is not None and start + keep == expected


def test_stop_check_skips_end_of_generation_ids_and_goes_on_without_a_stop():
    tokenizer = server_model.tiny_tokenizer()
    ids = tokenizer.encode("hello world", add_bos=False)
    assert tokenizer.decode(ids[:1]) == "hello"
    check = StopCheck(tokenizer, ["hello", "d!"], skip_ids=frozenset({ids[0]}))
    assert check(ids) is None  # "hello" is skipped like an end-of-generation id; "d!" is not there yet
    assert check(tokenizer.encode("!", add_bos=False)) == 1


# ---------------------------------------------------------------------------------------------
# request validation


def test_unknown_fields_are_accepted_and_known_ones_checked_strictly():
    body = b'{"messages": [{"role": "user", "content": "hi"}], "user": "me", "max_tokens": 5}'
    request = parse_request(body, ChatCompletionRequest)
    assert request.n_predict(-1) == 5
    with pytest.raises(RequestError, match=r"^max_tokens: ") as info:
        parse_request(
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5.5}', ChatCompletionRequest
        )
    assert info.value.param == "max_tokens"


def test_max_completion_tokens_wins_over_max_tokens():
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 7}'
    assert parse_request(body, ChatCompletionRequest).n_predict(-1) == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt": "a", "stop": 3}', "stop"),
        (b'{"prompt": ["a", "b"]}', "prompt"),
        (b'{"prompt": "a", "echo": true}', "echo"),
        (b'{"prompt": "a", "presence_penalty": 0.5}', "presence_penalty"),
        (b'{"prompt": "a", "speculative": {"bogus": 1}}', "speculative.bogus"),
    ],
)
def test_completion_fields_we_cannot_honour_are_refused_by_name(body, param):
    with pytest.raises(RequestError) as info:
        parse_request(body, CompletionRequest)
    assert info.value.param == param


def test_content_parts_of_unknown_types_are_refused_naming_the_known_ones():
    body = b'{"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "x"}}]}]}'
    with pytest.raises(RequestError, match="image_url") as info:
        parse_request(body, ChatCompletionRequest)
    assert info.value.param == "messages[0].content[0].type"


def test_image_parts_need_their_field_and_a_user_message():
    body = b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'
    with pytest.raises(RequestError) as info:
        parse_request(body, ChatCompletionRequest)
    assert info.value.param == "messages[0].content[0].image_url"
    body = b'{"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]}]}'
    with pytest.raises(RequestError, match="user messages"):
        parse_request(body, ChatCompletionRequest)


# ---------------------------------------------------------------------------------------------
# per-request speculation

SERVER_DEFAULT = SpecOptions(type="mtp", n_max=3, p_min=0.1)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (None, SERVER_DEFAULT),
        (SpeculativeField(enabled=False, n_max=5), SpecOptions(type="none")),
        (SpeculativeField(n_max=1), SpecOptions(type="mtp", n_max=1, p_min=0.1)),
        (SpeculativeField(type="ngram"), SpecOptions(type="ngram", n_max=3, p_min=0.1)),
        (SpeculativeField(type="draft-mtp", n_max=0), SpecOptions(type="mtp", n_max=0, p_min=0.1)),
    ],
)
def test_request_speculation_overrides_the_server_default(field, expected):
    assert spec_options(field, SERVER_DEFAULT, {"mtp", "ngram"}) == expected


def test_llama_cpp_strategy_names_in_a_request_map_or_say_what_to_use():
    """The request's speculative.type takes llama.cpp's names as the CLI does, with its message."""
    drafted = spec_options(SpeculativeField(type="ngram-simple"), SERVER_DEFAULT, {"mtp", "ngram"})
    assert drafted.type == "ngram"
    with pytest.raises(RequestError, match="ngram-cache is not supported by gemma-mtp; use ngram") as err:
        spec_options(SpeculativeField(type="ngram-cache"), SERVER_DEFAULT, {"mtp", "ngram"})
    assert err.value.param == "speculative.type"
    with pytest.raises(RequestError, match="'eagle' is not one of none, mtp"):
        spec_options(SpeculativeField(type="eagle"), SERVER_DEFAULT, {"mtp", "ngram"})


def test_a_drafter_the_server_did_not_load_is_a_400():
    with pytest.raises(RequestError, match="-md"):
        spec_options(SpeculativeField(type="draft"), SERVER_DEFAULT, {"mtp", "ngram"})
    with pytest.raises(RequestError, match="speculative.type"):
        spec_options(SpeculativeField(enabled=True), SpecOptions(), {"ngram"})


# ---------------------------------------------------------------------------------------------
# metrics


def test_prometheus_text_has_help_type_and_per_position_counters():
    metrics = Metrics()
    metrics.request("/v1/completions")
    metrics.tokens(prompt=7, generated=3)
    stats = SpecStats()
    stats.record(3, 2)
    stats.record(2, 0)
    metrics.speculation(stats)
    text = metrics.render({"num_slots": 4})
    assert "# TYPE gemma_mtp:spec_decode_num_draft_tokens_total counter" in text
    assert "gemma_mtp:spec_decode_num_draft_tokens_total 5\n" in text
    assert "gemma_mtp:spec_decode_num_accepted_tokens_total 2\n" in text
    assert 'gemma_mtp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 1\n' in text
    assert 'gemma_mtp:spec_decode_num_accepted_tokens_per_pos_total{position="2"} 0\n' in text
    assert 'gemma_mtp:requests_total{endpoint="/v1/completions"} 1\n' in text
    assert "gemma_mtp:num_slots 4\n" in text and "gemma_mtp:prompt_tokens_total 7\n" in text


def test_stats_delta_counts_only_what_is_new():
    stats = SpecStats()
    stats.record(3, 1)
    seen = stats.counts()
    stats.record(4, 4)
    delta = stats.since(seen)
    assert (delta.rounds, delta.drafted, delta.accepted) == (1, 4, 4)
    assert delta.accepted_by_position == [1, 1, 1, 1] and delta.drafted_by_position == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# the worker, on a decoder that counts


class CountingDecoder:
    """A `BatchDecoder` stand-in: every round each row appends (its last token + 1)."""

    def __init__(self, rows: int) -> None:
        self.slots: list[Slot | None] = [None] * rows
        self.drafters: dict = {}
        self.fail_next_step = False

    def add(self, prompt_ids, *, n_predict, sampling, spec, stop_ids) -> Slot:
        row = self.slots.index(None)
        self.slots[row] = Slot(
            row=row,
            tokens=list(prompt_ids),
            n_prompt=len(prompt_ids),
            budget=n_predict,
            sampling=sampling,
            spec=spec,
            stop_ids=stop_ids,
            generator=None,
        )
        return self.slots[row]

    def step(self) -> dict[int, list[int]]:
        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("device lost")
        out = {}
        for slot in [s for s in self.slots if s is not None and not s.done]:
            token = slot.tokens[-1] + 1
            slot.tokens.append(token)
            slot.budget -= 1
            if slot.budget <= 0:
                slot.stop_reason = "length"
            out[slot.row] = [token]
        return out

    def release(self, slot: Slot) -> None:
        self.slots[slot.row] = None


def job(events: queue.Queue, prompt: list[int], n: int) -> Job:
    return Job(
        prompt_ids=prompt,
        n_predict=n,
        sampling=SamplingParams(temperature=0),
        spec=SpecOptions(),
        stop_ids=frozenset(),
        deliver=events.put,
    )


def outcome(events: queue.Queue) -> tuple[list[int], object]:
    """Tokens received and the final event."""
    tokens = []
    while True:
        event = events.get(timeout=10)
        if isinstance(event, Tokens):
            tokens += event.ids
        else:
            return tokens, event


def test_queue_bound_counts_free_slots_then_max_queue():
    worker = Worker(CountingDecoder(rows=2), max_queue=1)  # not started: nothing leaves the queue
    events = queue.Queue()
    for _ in range(3):
        worker.submit(job(events, [1], 4))
    with pytest.raises(QueueFull, match="retry later"):
        worker.submit(job(events, [1], 4))


def test_jobs_beyond_the_slots_wait_then_run_to_the_same_result():
    worker = Worker(CountingDecoder(rows=1), max_queue=4)
    channels = [queue.Queue() for _ in range(3)]
    for i, events in enumerate(channels):
        worker.submit(job(events, [10 * i], 3))
    worker.start()
    try:
        results = [outcome(events) for events in channels]
    finally:
        worker.stop()
    assert [tokens for tokens, _ in results] == [[1, 2, 3], [11, 12, 13], [21, 22, 23]]
    assert all(isinstance(end, Finished) and end.stop_reason == "length" for _, end in results)


def test_cancelling_a_waiting_job_drops_it_without_a_slot():
    worker = Worker(CountingDecoder(rows=1), max_queue=4)
    events = queue.Queue()
    waiting = job(events, [5], 3)
    worker.submit(waiting)
    worker.cancel(waiting)
    worker.start()
    try:
        tokens, end = outcome(events)
    finally:
        worker.stop()
    assert tokens == [] and isinstance(end, Finished) and end.stop_reason == "cancelled"


def test_a_failed_round_fails_its_jobs_and_the_worker_serves_on():
    decoder = CountingDecoder(rows=2)
    decoder.fail_next_step = True
    worker = Worker(decoder, max_queue=4)
    first = queue.Queue()
    worker.submit(job(first, [1], 3))
    worker.start()
    try:
        _, end = outcome(first)
        assert isinstance(end, Failed) and "device lost" in str(end.error)
        assert worker.snapshot()["decoder_rows_in_use"] == 0
        second = queue.Queue()
        worker.submit(job(second, [7], 2))
        assert outcome(second)[0] == [8, 9]
    finally:
        worker.stop()


def test_stopping_the_worker_fails_waiting_jobs_and_refuses_new_ones():
    worker = Worker(CountingDecoder(rows=1), max_queue=4)
    events = queue.Queue()
    worker.submit(job(events, [1], 3))
    worker.stop()
    _, end = outcome(events)
    assert isinstance(end, Failed) and isinstance(end.error, WorkerStopped)
    with pytest.raises(WorkerStopped):
        worker.submit(job(events, [1], 3))


# ---------------------------------------------------------------------------------------------
# flags


def serve_args(*argv: str) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser.add_subparsers(dest="command"))
    return settings_from_args(parser.parse_args(["serve", *argv]))


def test_serve_flags_use_llama_server_names_and_loopback_by_default():
    settings = serve_args("-m", "T", "-md", "D", "-np", "2", "--draft-max", "5", "-c", "512", "--alias", "g")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert (settings.parallel, settings.load.ctx_size, settings.alias) == (2, 512, "g")
    assert (settings.load.model, settings.load.model_draft) == ("T", "D")
    # no --spec-type: what the drafter is, decided once it is loaded (mtp for an assistant)
    assert settings.spec == SpecFlags(n_max=5) and settings.spec.resolve("mtp") == SpecOptions(
        type="mtp", n_max=5
    )
    assert serve_args("-m", "T").spec.resolve("none").type == "none"
    assert serve_args("-m", "T", "--spec-type", "ngram", "--spec-draft-n-max", "4").spec.n_max == 4
    assert serve_args("-m", "T", "-t", "1").load.threads == 1


def test_serve_without_m_serves_the_demo_pair_with_the_notice(monkeypatch, capsys):
    from gemma_mtp import demo

    monkeypatch.setattr(demo, "demo_target", lambda: "/cache/gemma-3-270m.gguf")
    settings = serve_args()
    assert settings.load.model == "/cache/gemma-3-270m.gguf"
    assert settings.load.model_draft == str(demo.demo_drafter())
    assert settings.spec.p_min == demo.DEMO_P_MIN
    assert settings.fallback_chat_template == str(demo.DEMO_CHAT_TEMPLATE)
    assert "no -m/--model: using the demo target Gemma 3 270M" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["-m", "T", "-np", "0"], "-np/--parallel"),
        (["-m", "T", "--spec-type", "mtp"], "-md"),
        (["-m", "T", "--draft-max", "99"], "--spec-draft-n-max"),
        (["-m", "T", "-t", "0"], "-t/--threads"),
    ],
)
def test_bad_serve_flags_name_the_flag(argv, flag):
    with pytest.raises(UsageError, match=flag):
        serve_args(*argv)
