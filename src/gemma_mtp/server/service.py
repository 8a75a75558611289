"""The loaded model the server runs on: its worker, tokenizer, chat template and defaults."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat import ChatTemplate
from ..errors import GemmaMTPError, UsageError
from ..speculative.options import SpecOptions
from ..tokenizer import Tokenizer, load_tokenizer
from .metrics import Metrics
from .settings import ServerSettings
from .worker import Worker

__all__ = ["Service", "load_service"]


@dataclass
class Service:
    """A loaded model, ready to serve."""

    worker: Worker
    tokenizer: Tokenizer
    template: ChatTemplate | None  # None: the model has no chat template (completions only)
    model_id: str
    ctx_size: int
    stop_ids: frozenset[int]  # the model's and the tokenizer's end-of-generation ids
    default_spec: SpecOptions
    n_predict: int
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))
    info: dict = field(default_factory=dict)
    # images: the engine's tower (loaded on the first image), one request encoding at a time
    media_encoder: Callable[[], Any] | None = None
    media_lock: threading.Lock = field(default_factory=threading.Lock)
    local_media: Path | None = None  # --allow-local-media DIR: image files a request may name
    max_media_bytes: int = 32 << 20

    @property
    def model_ids(self) -> list[str]:
        """The names ``/v1/models`` lists; a request's ``model`` must be one of them (or absent)."""
        return [self.model_id]

    @property
    def drafters(self) -> set[str]:
        return set(self.worker.decoder.drafters)


def load_service(settings: ServerSettings, *, metrics: Metrics | None = None) -> Service:
    """Load the target (and drafter), build a ``parallel``-row decoder and its worker (not started)."""
    from .. import api  # torch and the models: imported only when a server really loads
    from ..engine.media import MAX_IMAGE_BYTES

    if settings.load.model is None:
        raise UsageError("no model: pass -m/--model PATH (a Hugging Face model directory or a .gguf file)")
    tokenizer = load_tokenizer(settings.load.model)
    template = _template(tokenizer, settings)
    # one Engine with a row per slot; a drafter only when the strategy drafts with one
    load = dataclasses.replace(settings.load, max_batch=settings.parallel)
    if not settings.spec.wants_drafter:
        load = dataclasses.replace(load, model_draft=None)
    engine = api.load(load.model, load.model_draft, options=load)
    engine.tokenizer = tokenizer  # the media tokens of a GGUF's mmproj are looked up in it
    default_spec = settings.spec.resolve(engine.default_spec().type)
    metrics = metrics or Metrics()
    worker = Worker(engine.decoder, max_queue=settings.max_queue, metrics=metrics)
    return Service(
        worker=worker,
        tokenizer=tokenizer,
        template=template,
        model_id=settings.model_id,
        ctx_size=load.ctx_size,
        stop_ids=engine.stop_ids | tokenizer.stop_ids,
        default_spec=default_spec,
        n_predict=settings.n_predict,
        metrics=metrics,
        media_encoder=engine.media_encoder,
        local_media=None if settings.allow_local_media is None else Path(settings.allow_local_media),
        max_media_bytes=MAX_IMAGE_BYTES,
        info={
            "family": engine.config.family,
            "vocab_size": engine.config.vocab_size,
            "n_slots": settings.parallel,
            "n_ctx_slot": load.ctx_size,
            "speculative": default_spec.type,
            "threads": engine.threads,
            "drafters": sorted(engine.decoder.drafters),
        },
    )


def _template(tokenizer: Tokenizer, settings: ServerSettings) -> ChatTemplate | None:
    if settings.chat_template_file is None and settings.fallback_chat_template is None:
        if not tokenizer.chat_template:
            return None
    try:
        return ChatTemplate.for_tokenizer(
            tokenizer,
            override_file=settings.chat_template_file,
            fallback_file=settings.fallback_chat_template,
        )
    except GemmaMTPError as exc:
        raise GemmaMTPError(f"chat template: {exc}") from exc
