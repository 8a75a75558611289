"""``gemma-mtp chat``: an interactive conversation with history, rendered with the model's template.

One input line is one user message; ``/image PATH`` and ``/audio PATH`` (a WAV clip) go with the
next one and stay in the history. ``/reset`` clears the history, ``/exit`` (or end of input,
Ctrl-D) quits. Ctrl-C during an answer stops that answer; what was shown of it stays in the
history (the next turn sees what the user saw) and the session goes on. When stdin is not a
terminal, lines are read as a script, which is how the tests drive it.

Answers stream to stdout; reasoning (``--reasoning on``) is shown dimmed on a terminal and between
``[thinking]`` markers otherwise; a status line (tokens/s, acceptance) follows each answer on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from gemma_mtp.chat import ChatEvent, ChatOutputParser, ChatTemplate, collect_events
from gemma_mtp.cli.args import ChatOptions
from gemma_mtp.cli.common import (
    load_engine,
    load_summary,
    options_from_args,
    print_lines,
    read_tokenizer,
    resolve_spec,
    sampling_from_args,
    status_line,
    with_demo_pair,
)
from gemma_mtp.cli.media_args import user_content
from gemma_mtp.engine.results import Result
from gemma_mtp.errors import ContextOverflowError, GemmaMTPError
from gemma_mtp.media.image import MediaError

if TYPE_CHECKING:
    from gemma_mtp.api import Engine
    from gemma_mtp.sampling_params import SamplingParams
    from gemma_mtp.speculative.options import SpecOptions

__all__ = ["chat_command", "ChatSession", "AnswerView", "RESET_COMMAND", "EXIT_COMMANDS"]

RESET_COMMAND = "/reset"
EXIT_COMMANDS = ("/exit", "/quit")
_DIM, _PLAIN = "\x1b[2m", "\x1b[0m"
IMAGE_COMMAND = "/image"  # llama.cpp's mtmd-cli: `/image PATH` goes with the next message
AUDIO_COMMAND = "/audio"  # (and `/audio PATH`, a WAV clip, likewise)
_HELLO = (
    "chat: /image PATH adds an image, /audio PATH a WAV clip, /reset clears the history, "
    "/exit or Ctrl-D quits, Ctrl-C stops an answer"
)


def chat_command(args: argparse.Namespace) -> int:
    options = options_from_args(args, ChatOptions)
    sampling = sampling_from_args(args)
    options = with_demo_pair(options)
    tokenizer = read_tokenizer(options.load.model, required=True)
    # The template is checked before the weights load: a model without one fails in a second.
    template = ChatTemplate.for_tokenizer(
        tokenizer, override_file=options.chat_template_file, fallback_file=options.fallback_chat_template
    )
    engine = load_engine(options, show_progress=not options.quiet and sys.stderr.isatty())
    spec = resolve_spec(options, engine)
    if not options.quiet:
        print_lines(load_summary(engine, options))
    engine.tokenizer = tokenizer
    session = ChatSession(engine, template, options=options, sampling=sampling, spec=spec)

    interactive = sys.stdin.isatty()
    if interactive and not options.quiet:
        print(_HELLO, file=sys.stderr)
    for line in _user_lines(interactive):
        command = line.strip()
        if not command:
            continue
        if command in EXIT_COMMANDS:
            break
        attach = {IMAGE_COMMAND: session.attach, AUDIO_COMMAND: session.attach_audio}
        name, _, path = command.partition(" ")
        if name in attach:
            try:
                attach[name](path.strip())
            except GemmaMTPError as exc:
                print(f"error: {exc}", file=sys.stderr)
            continue
        if command == RESET_COMMAND:
            session.reset()
            if not options.quiet:
                print("[history cleared]", file=sys.stderr)
            continue
        try:
            result = session.answer(line)
        except ContextOverflowError as exc:
            print(f"error: {exc}; {RESET_COMMAND} clears the history", file=sys.stderr)
            continue
        except MediaError as exc:  # e.g. a model without a vision tower: the pending media are dropped
            print(f"error: {exc}", file=sys.stderr)
            session.pending.clear()
            session.pending_audio.clear()
            continue
        if not options.quiet:
            stopped = "[stopped] " if result.stop_reason == "cancelled" else ""
            print(stopped + status_line(result), file=sys.stderr)
    return 0


def _user_lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # not on every platform
        pass
    while True:
        try:
            yield input("> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt: leave
            print(file=sys.stderr)
            return


class ChatSession:
    """The conversation so far and how to answer the next message."""

    def __init__(
        self,
        engine: Engine,
        template: ChatTemplate,
        *,
        options: ChatOptions,
        sampling: SamplingParams,
        spec: SpecOptions,
        out: TextIO | None = None,
    ) -> None:
        self.engine, self.template = engine, template
        self.options, self.sampling, self.spec = options, sampling, spec
        self.out = out or sys.stdout
        self.messages: list[dict[str, Any]] = []  # user and assistant turns, no system message
        self.images: list[str] = []  # the history's images, in order (every turn re-reads them all)
        self.pending: list[str] = []  # `/image` files for the next message
        self.audio: list[str] = []  # the history's clips, in order
        self.pending_audio: list[str] = []  # `/audio` files for the next message

    def reset(self) -> None:
        self.messages.clear()
        for media in (self.images, self.pending, self.audio, self.pending_audio):
            media.clear()

    def attach(self, path: str) -> None:
        """Check an image now (a bad file is an error here, not after the next message)."""
        from gemma_mtp.engine.media import MAX_IMAGE_BYTES
        from gemma_mtp.media.image import open_image

        if not path:
            raise MediaError(f"{IMAGE_COMMAND} needs a file: {IMAGE_COMMAND} PATH")
        open_image(path, max_bytes=MAX_IMAGE_BYTES)
        self.pending.append(path)

    def attach_audio(self, path: str) -> None:
        """Check a WAV clip now, as `attach` does an image."""
        from gemma_mtp.engine.media import MAX_AUDIO_BYTES
        from gemma_mtp.media.audio import read_wav

        if not path:
            raise MediaError(f"{AUDIO_COMMAND} needs a WAV file: {AUDIO_COMMAND} PATH")
        read_wav(path, max_bytes=MAX_AUDIO_BYTES)
        self.pending_audio.append(path)

    def _user_message(self, user_text: str) -> dict[str, Any]:
        return {
            "role": "user",
            "content": user_content(user_text, len(self.pending), len(self.pending_audio)),
        }

    def _media(self) -> dict[str, list[str]]:
        """The images and clips of the history and of the next message, in order, as `stream` takes them."""
        images, audio = self.images + self.pending, self.audio + self.pending_audio
        return {**({"images": images} if images else {}), **({"audio": audio} if audio else {})}

    def prompt_ids(self, user_text: str) -> list[int]:
        system = self.options.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        messages = [*head, *self.messages, self._user_message(user_text)]
        rendered = self.template.render(messages, enable_thinking=self.options.enable_thinking)
        return self.engine.tokenizer.encode(rendered)

    def answer(self, user_text: str) -> Result:
        """Stream the answer to ``out``; Ctrl-C stops it early (``stop_reason`` "cancelled")."""
        prompt_ids = self.prompt_ids(user_text)
        view = AnswerView(self.out, show_reasoning=self.options.enable_thinking is True)
        parser = ChatOutputParser()
        result = Result()
        steps = self.engine.stream(
            prompt_ids,
            n_predict=self.options.n_predict,
            sampling=self.sampling,
            spec=self.spec,
            result=result,
            **self._media(),
        )
        try:
            for step in steps:
                view.show(parser.feed(step.text))
        except KeyboardInterrupt:
            pass  # the partial answer is kept below; the generator's cleanup fills `result`
        finally:
            steps.close()
        view.show(parser.finish())
        view.end()
        self.messages.append(self._user_message(user_text))
        self.images += self.pending
        self.audio += self.pending_audio
        self.pending, self.pending_audio = [], []
        self.messages.append(view.assistant_message())
        return result


class AnswerView:
    """Writes parser events: content as is, reasoning dimmed (or marked), tool calls on a line."""

    def __init__(self, out: TextIO, *, show_reasoning: bool, color: bool | None = None) -> None:
        self.out = out
        self.show_reasoning = show_reasoning
        self.color = _wants_color(out) if color is None else color
        self.events: list[ChatEvent] = []
        self._in_reasoning = False

    def show(self, events: list[ChatEvent]) -> None:
        for event in events:
            self.events.append(event)
            if event.kind == "reasoning":
                if self.show_reasoning:
                    self._open_reasoning()
                    self.out.write(event.text)
                continue
            self._close_reasoning()
            if event.kind == "tool_call":
                function = event.tool_call["function"]
                self.out.write(f"[tool call] {function['name']} {function['arguments']}\n")
            else:
                self.out.write(event.text)
        self.out.flush()

    def end(self) -> None:
        self._close_reasoning()
        self.out.write("\n")
        self.out.flush()

    def assistant_message(self) -> dict[str, Any]:
        """What the history keeps: the content and tool calls, not the reasoning (Gemma's templates
        drop earlier turns' thinking anyway)."""
        parsed = collect_events(self.events)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            message["tool_calls"] = parsed.tool_calls
        return message

    def _open_reasoning(self) -> None:
        if not self._in_reasoning:
            self.out.write(_DIM if self.color else "[thinking]\n")
            self._in_reasoning = True

    def _close_reasoning(self) -> None:
        if self._in_reasoning:
            self.out.write(f"{_PLAIN}\n" if self.color else "\n[/thinking]\n")
            self._in_reasoning = False


def _wants_color(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ
