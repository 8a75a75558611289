"""One generation request on the HTTP side: prompt, job, events from the worker, the response.

``Generation`` submits a job to the worker and turns what the worker delivers (on the event loop,
through ``call_soon_threadsafe``) into text events. ``stream`` yields SSE frames, ``collect``
builds the whole response; both cancel the job when they end early, so a client that goes away
frees its slot before the next round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..chat import ChatEvent, collect_events
from ..errors import GemmaMTPError
from .media import encode_media, has_media, media_encoder, request_media, template_content
from .responses import ApiError, Envelope, chat_delta, chat_message, sse, timings, usage
from .schemas import ChatCompletionRequest, CompletionRequest, RequestError, sampling_params, spec_options
from .service import Service
from .speculation import FIELD as SPECULATION_FIELD
from .speculation import SpecTally
from .text import StopCheck, TextOutput
from .worker import Failed, Finished, Job, QueueFull, Tokens, WorkerStopped

if TYPE_CHECKING:
    from ..media.prompt import PromptMedia

__all__ = ["Generation", "chat_prompt", "completion_prompt", "chat_input", "completion_input"]

PromptInput = tuple[list[int], "PromptMedia | None"]


async def chat_input(service: Service, request: ChatCompletionRequest) -> PromptInput:
    """The prompt ids and, when the messages carry images, their soft tokens. Decoding and the
    towers run in a thread, so the event loop keeps streaming other requests meanwhile."""
    if not has_media(request):
        return chat_prompt(service, request), None

    def prepare() -> PromptInput:
        parts = request_media(request, local_dir=service.local_media, max_bytes=service.max_media_bytes)
        encoder = media_encoder(service, parts)  # no tower: said before the template renders parts
        return encode_media(encoder, service.media_lock, chat_prompt(service, request), parts)

    return await asyncio.to_thread(prepare)


async def completion_input(service: Service, request: CompletionRequest) -> PromptInput:
    return completion_prompt(service, request), None


def chat_prompt(service: Service, request: ChatCompletionRequest) -> list[int]:
    if service.template is None:
        raise ApiError(
            400,
            "the model has no chat template; use /v1/completions or restart the server with "
            "--chat-template-file FILE",
        )
    messages = []
    for message in request.messages:
        item = message.model_dump(exclude_none=True)
        if item["role"] == "developer":
            item["role"] = "system"
        if isinstance(message.content, list):
            item["content"] = template_content(message)
        messages.append(item)
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
    choice = request.tool_choice
    if choice == "none":
        tools = []
    elif choice is not None and not isinstance(choice, str):
        tools = [tool for tool in tools if tool["function"]["name"] == choice.function.name]
        if not tools:
            raise RequestError(f"tool_choice names {choice.function.name!r}, which is not in tools")
    kwargs = dict(request.chat_template_kwargs or {})
    enable_thinking = kwargs.pop("enable_thinking", None)
    try:
        text = service.template.render(
            messages, tools=tools or None, enable_thinking=enable_thinking, **kwargs
        )
    except GemmaMTPError as exc:
        raise RequestError(str(exc), param="messages") from None
    return service.tokenizer.encode(text)


def completion_prompt(service: Service, request: CompletionRequest) -> list[int]:
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return service.tokenizer.encode(prompt)
    vocab = service.info.get("vocab_size", service.tokenizer.vocab_size)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise RequestError(
            f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt"
        )
    return list(prompt)


class Generation:
    """A submitted job and the text it produces. Create it on the event loop."""

    def __init__(
        self,
        service: Service,
        request: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        *,
        chat: bool,
        media: PromptMedia | None = None,
    ) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(prompt_ids) >= service.ctx_size:
            raise ApiError(
                400,
                f"the prompt has {len(prompt_ids)} tokens but a slot's context holds {service.ctx_size}; "
                "shorten the prompt (or the chat history), or restart the server with a larger -c/--ctx-size",
                type="exceed_context_size_error",
                extra={"n_prompt_tokens": len(prompt_ids), "n_ctx": service.ctx_size},
            )
        self.service = service
        self.request = request
        self.envelope = Envelope(chat=chat, model=service.model_id)
        self.output = TextOutput(service.tokenizer, request.stop_strings, chat=chat)
        self.finished: Finished | None = None
        self._failed = False
        self._closed = False
        self._tool_calls = 0
        self._events: list[ChatEvent] = []
        # streamed chunks say how their tokens were produced only when the request asks
        self.tally = SpecTally() if request.stream and request.return_speculation else None
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(event: Tokens | Finished | Failed) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server is going down, nobody listens
                pass

        stop_ids = frozenset() if request.ignore_eos else service.stop_ids
        stops = request.stop_strings
        self.job = Job(
            prompt_ids=prompt_ids,
            n_predict=request.n_predict(service.n_predict),
            sampling=sampling_params(request),
            spec=spec_options(request.speculative, service.default_spec, service.drafters),
            stop_ids=stop_ids,
            # the worker ends the request at the token that completes a stop string, so usage and
            # timings count no token past it and no round is spent after it
            stop_check=StopCheck(service.tokenizer, stops, skip_ids=stop_ids) if stops else None,
            deliver=deliver,
            media=media,
        )
        try:
            service.worker.submit(self.job)
        except QueueFull as exc:
            raise ApiError(429, str(exc), headers={"Retry-After": "1"}) from None
        except WorkerStopped as exc:
            raise ApiError(503, str(exc)) from None

    # -- events ---------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[list[tuple[ChatEvent, dict[str, int] | None]]]:
        """Text events as rounds commit tokens, each with the ``x_speculation`` counts it reports
        (None unless the request asked for them); returns after ``Finished`` (then ``self.finished``)."""
        while True:
            event = await self._queue.get()
            if isinstance(event, Failed):
                self._failed = True
                self.service.metrics.finished("error")
                raise event.error
            if isinstance(event, Finished):
                self.finished = event
                out = self._tagged(self.output.finish())
            elif self.output.stopped:
                continue
            else:
                out = self._push(event)
                if self.output.stopped:  # the worker's StopCheck ended the job already; to be sure
                    self.service.worker.cancel(self.job)
            self._events += [chat_event for chat_event, _ in out]
            if out:
                yield out
            if self.finished is not None:
                self.service.metrics.finished(self.finish_reason)
                return

    def _push(self, event: Tokens) -> list[tuple[ChatEvent, dict[str, int] | None]]:
        # the end-of-generation token that stopped the row is not part of the answer
        stop_ids = self.job.stop_ids
        if self.tally is None:
            return self._tagged(self.output.push([t for t in event.ids if t not in stop_ids]))
        out = []  # token by token, so that each chunk's counts describe the text it carries
        for token, _ in self.tally.tokens(event):
            if token not in stop_ids and not self.output.stopped:
                out += self._tagged(self.output.push([token]))
        return out

    def _tagged(self, events: list[ChatEvent]) -> list[tuple[ChatEvent, dict[str, int] | None]]:
        """The first event carries the counts not yet reported; the others none."""
        if not events:
            return []
        counts = self.tally.take() if self.tally is not None else None
        return [(events[0], counts), *((event, None) for event in events[1:])]

    @property
    def finish_reason(self) -> str:
        if any(event.kind == "tool_call" for event in self._events):
            return "tool_calls"
        if self.output.stopped:
            return "stop"
        reason = self.finished.stop_reason if self.finished is not None else "cancelled"
        return {"eos": "stop", "length": "length", "context": "length"}.get(reason, reason)

    def close(self) -> None:
        """The response is over (sent, failed or abandoned): free the slot if it is still held."""
        if self._closed:
            return
        self._closed = True
        if self.finished is None and not self._failed:
            self.service.worker.cancel(self.job)
            self.service.metrics.finished("cancelled")

    # -- responses -----------------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[str]:
        env = self.envelope
        try:
            if env.chat:
                yield sse(env.delta({"role": "assistant", "content": ""}))
            async for events in self.events():
                for event, counts in events:
                    chunk = env.delta(chat_delta(event, self._tool_calls))
                    if counts is not None:
                        chunk[SPECULATION_FIELD] = counts
                    yield sse(chunk)
                    self._tool_calls += event.kind == "tool_call"
            final = env.delta({}, self.finish_reason)
            final["timings"] = timings(self.finished)
            if self.tally is not None:
                final[SPECULATION_FIELD] = self.tally.take()
            yield sse(final)
            if self.request.include_usage:
                yield sse(env.chunk(None, usage=usage(self.finished)))
            yield sse("[DONE]")
        except Exception as exc:
            error = _api_error(exc)
            yield sse(error.body())
        finally:
            self.close()

    async def collect(self, wait_disconnect: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """The whole response; a client that disconnects meanwhile cancels the job."""
        watcher = asyncio.ensure_future(wait_disconnect())
        watcher.add_done_callback(lambda task: task.cancelled() or self.service.worker.cancel(self.job))
        try:
            async for _ in self.events():
                pass
        except Exception as exc:
            raise _api_error(exc) from None
        finally:
            watcher.cancel()
            self.close()
        if self.envelope.chat:
            message = chat_message(collect_events(self._events))
            choice = {"message": message, "finish_reason": self.finish_reason}
        else:
            choice = {"text": self.output.text, "finish_reason": self.finish_reason}
        return self.envelope.response(choice, self.finished)


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, WorkerStopped):
        return ApiError(503, str(exc))
    if isinstance(exc, GemmaMTPError):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}")
