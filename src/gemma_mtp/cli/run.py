"""``gemma-mtp run``: one generation. Parses flags into options, calls the engine, formats.

Text goes to stdout as the engine commits it; the load summary and the timing line go to stderr,
so ``--json`` output and piped text stay clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_mtp.cli.args import RunOptions
from gemma_mtp.cli.common import (
    load_engine,
    load_summary,
    options_from_args,
    print_lines,
    read_tokenizer,
    resolve_spec,
    sampling_from_args,
    summary_line,
    with_demo_pair,
)
from gemma_mtp.cli.escapes import process_escapes
from gemma_mtp.cli.media_args import check_images, user_content, with_image_placeholders
from gemma_mtp.engine.results import Result
from gemma_mtp.errors import ContextOverflowError, GemmaMTPError, UsageError

if TYPE_CHECKING:
    from gemma_mtp.api import Engine
    from gemma_mtp.tokenizer import Tokenizer

__all__ = ["run_command", "options_from_args", "sampling_from_args", "summary_line", "chat_prompt_ids"]


def run_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    sampling = sampling_from_args(args)
    text = _prompt_text(options)  # usage errors first: without -m the demo target may be fetched
    images = list(getattr(args, "images", None) or [])
    audio = list(getattr(args, "audio", None) or [])
    check_images(images)
    check_images(audio, "--audio")
    options = with_demo_pair(options)
    tokenizer = read_tokenizer(options.load.model, required=text is not None)
    if text is None:
        prompt_ids = list(options.prompt_ids or ())
    elif options.uses_template:
        prompt_ids = chat_prompt_ids(tokenizer, _messages(options, text, len(images), len(audio)), options)
    else:
        prompt_ids = tokenizer.encode(text)
    check_fits(len(prompt_ids), options.load.ctx_size)  # before the weights load: they may take minutes

    engine = load_engine(options, show_progress=_show_progress(options))
    spec = resolve_spec(options, engine)
    if not options.quiet:
        print_lines(load_summary(engine, options))
    _check_vocabulary(prompt_ids, engine)
    engine.tokenizer = tokenizer
    if (images or audio) and not options.uses_template:  # a raw prompt: the model's own placeholder ids
        encoder = engine.media_encoder()
        encoder.require(images=bool(images), audio=bool(audio))  # before the ids meet the vocabulary
        tokens = encoder.tokens
        with_audio = with_image_placeholders(prompt_ids, len(audio), tokens.audio, bos=2)
        prompt_ids = with_image_placeholders(with_audio, len(images), tokens.image, bos=2)

    start = time.perf_counter()
    if options.json:
        media = _media(images, audio)  # (engines without media support stay usable)
        result = engine.generate(
            prompt_ids, n_predict=options.n_predict, sampling=sampling, spec=spec, **media
        )
        print(json.dumps(result.to_dict()))
    else:
        result = _stream(engine, prompt_ids, options, sampling, spec, tokenizer, _media(images, audio))
    if not options.quiet and not options.json:
        print(summary_line(result, time.perf_counter() - start), file=sys.stderr)
    return 0


def _media(images: list[str], audio: list[str]) -> dict[str, list[str]]:
    return {**({"images": images} if images else {}), **({"audio": audio} if audio else {})}


def _stream(engine: Engine, prompt_ids, options: RunOptions, sampling, spec, tokenizer, media=None) -> Result:
    """Write each committed piece of text as it arrives; without a tokenizer, the ids at the end."""
    out = sys.stdout
    result = Result()
    media = media or {}
    for step in engine.stream(
        prompt_ids, n_predict=options.n_predict, sampling=sampling, spec=spec, result=result, **media
    ):
        if step.text:
            out.write(step.text)
            out.flush()
    if tokenizer is None:
        out.write(",".join(str(t) for t in result.token_ids))
    out.write("\n")
    out.flush()
    return result


def _prompt_text(options: RunOptions) -> str | None:
    """The text prompt (``-p`` or ``-f``), or None for ``--prompt-ids``."""
    if options.prompt_ids is not None:
        if options.uses_template:
            raise UsageError(
                "--chat/--jinja (and -sys, --chat-template-file, --reasoning) template a text prompt; "
                "pass -p/--prompt or -f/--file instead of --prompt-ids"
            )
        return None
    if options.prompt is not None:
        return process_escapes(options.prompt) if options.escape else options.prompt
    if options.file is not None:
        return read_prompt_file(options.file)
    raise UsageError("no prompt: pass -p/--prompt TEXT, -f/--file PATH or --prompt-ids ID,ID,...")


def read_prompt_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GemmaMTPError(f"-f/--file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise GemmaMTPError(f"-f/--file {path}: cannot read it ({reason})") from None


def _messages(options: RunOptions, text: str, n_images: int = 0, n_audio: int = 0) -> list[dict]:
    system = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
    return [*system, {"role": "user", "content": user_content(text, n_images, n_audio)}]


def chat_prompt_ids(tokenizer: Tokenizer, messages: list[dict], options: RunOptions) -> list[int]:
    """Render ``messages`` with the model's template (or ``--chat-template-file``) and encode them."""
    from gemma_mtp.chat import render_chat

    rendered = render_chat(
        tokenizer,
        messages,
        enable_thinking=options.enable_thinking,
        template_file=options.chat_template_file,
        fallback_file=options.fallback_chat_template,
    )
    return tokenizer.encode(rendered)


def check_fits(n_prompt: int, ctx_size: int) -> None:
    if n_prompt >= ctx_size:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens but -c/--ctx-size is {ctx_size}; "
            "raise -c or shorten the prompt"
        )


def _check_vocabulary(prompt_ids: list[int], engine: Engine) -> None:
    vocab_size = engine.config.vocab_size
    bad = [t for t in prompt_ids if t >= vocab_size]
    if bad:
        raise GemmaMTPError(
            f"--prompt-ids: token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1})"
        )


def _show_progress(options: RunOptions) -> bool:
    return not options.quiet and not options.json and sys.stderr.isatty()
