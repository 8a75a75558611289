"""`Engine`: a loaded target (and drafter), its KV cache, and generations one at a time.

Surfaces get an Engine from `gemma_mtp.load` (``api.py``); the server shares the Engine's batch
decoder among its slots through `engine.scheduler`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..config import TextConfig
from ..errors import ContextOverflowError, UsageError
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from ..sampling import SamplingParams
from ..speculative.base import MAX_DRAFT, Drafter, SpecOptions
from ..speculative.draft_model import DraftModelDrafter
from ..speculative.mtp import MTPDrafter
from ..speculative.ngram import NgramDrafter
from ..speculative.stats import SpecStats
from .batch import BatchDecoder, Slot
from .graph_decoder import GraphBatchDecoder
from .results import Result, Step, slot_timings

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from ..weights.hf import LoadReport
    from .media import AudioInput, ImageInput, MediaEncoder
    from .options import LoadOptions

__all__ = ["Engine"]


class Engine:
    """Owns a target (and drafter), its KV cache, and runs generations one at a time."""

    def __init__(
        self,
        target: GemmaModel,
        config: TextConfig,
        *,
        ctx_size: int,
        stop_ids: frozenset[int],
        drafter: torch.nn.Module | None = None,
        max_batch: int = 1,
        cuda_graphs: bool = False,
    ) -> None:
        """``cuda_graphs``: decode the rounds through `GraphBatchDecoder` (captured CUDA graphs on
        CUDA; elsewhere a UsageError unless `GEMMA_MTP_GRAPHS_EAGER=1` runs its static path eagerly)."""
        self.target = target
        self.config = config
        self.ctx_size = ctx_size
        self.stop_ids = stop_ids
        self.drafter = drafter
        self.load_report: LoadReport | None = None
        self.load_options: LoadOptions | None = None  # set by `gemma_mtp.load`
        self.threads: int | None = None  # the CPU threads `load` applied
        # Optional: set it to take text prompts, fill `Result.text`/`Step.text`, and stop on its ids too.
        self.tokenizer: Tokenizer | None = None
        self.load_s = 0.0
        self.stats: dict[str, SpecStats] = {}  # cumulative, per strategy
        self.media: MediaEncoder | None = None  # the vision tower, loaded on the first image
        self.mmproj: str | None = None  # llama.cpp's --mmproj: the media towers' GGUF, if separate
        decoder = GraphBatchDecoder if cuda_graphs else BatchDecoder
        self.decoder = decoder(target, max_batch=max_batch, ctx_size=ctx_size, max_draft=MAX_DRAFT)
        drafters: dict[str, Drafter] = {"ngram": NgramDrafter()}
        if isinstance(drafter, AssistantModel):
            drafters["mtp"] = MTPDrafter(target, drafter, self.decoder.cache)
        elif drafter is not None:
            drafters["draft"] = DraftModelDrafter(config, drafter, batch_size=max_batch, max_context=ctx_size)
        self.decoder.drafters = drafters

    def default_spec(self) -> SpecOptions:
        """mtp with an assistant, draft with a draft model, none otherwise (DESIGN.md)."""
        kind = (
            "mtp"
            if "mtp" in self.decoder.drafters
            else "draft"
            if "draft" in self.decoder.drafters
            else "none"
        )
        return SpecOptions(type=kind)

    def _prompt_ids(self, prompt: list[int] | str) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise UsageError("text prompts need a tokenizer: set engine.tokenizer, or pass token ids")
            prompt = self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        if not ids:
            raise UsageError("the prompt is empty; give at least one token id")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise UsageError(
                f"prompt token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})"
            )
        if len(ids) >= self.ctx_size:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context holds {self.ctx_size} (-c/--ctx-size); "
                "raise -c or shorten the prompt"
            )
        return ids

    def _check_spec(self, spec: SpecOptions) -> None:
        if spec.type in ("none", "ngram") or spec.type in self.decoder.drafters:
            return
        need = "an MTP assistant" if spec.type == "mtp" else "a draft model"
        raise UsageError(f"--spec-type {spec.type} needs {need}: pass it with -md/--model-draft")

    def stream(
        self,
        prompt: list[int] | str,
        *,
        n_predict: int = 128,
        sampling: SamplingParams | None = None,
        spec: SpecOptions | None = None,
        result: Result | None = None,
        images: Sequence[ImageInput] = (),
        audio: Sequence[AudioInput] = (),
    ) -> Iterator[Step]:
        """Generate, yielding the tokens each round commits; fills `result` (if given) as it goes.
        `images` (files, bytes or PIL images) fill the prompt's image placeholders, in order;
        `audio` (WAV files, bytes, or mono 16 kHz samples) its audio placeholders."""
        sampling = sampling or SamplingParams()
        spec = spec or self.default_spec()
        self._check_spec(spec)
        ids = self._prompt_ids(prompt)
        media = None
        if images or audio:
            ids, media = self.media_encoder().prepare(ids, images, audio)
        result = result if result is not None else Result()
        result.n_prompt = len(ids)
        tokenizer, stop_ids, text = self.tokenizer, self.stop_ids, None
        if tokenizer is not None:  # the model's EOS ids and the tokenizer's end-of-generation ids
            stop_ids, text = stop_ids | tokenizer.stop_ids, tokenizer.incremental_decoder()
        slot = self.decoder.add(
            ids, n_predict=n_predict, sampling=sampling, spec=spec, stop_ids=stop_ids, media=media
        )
        try:
            while not slot.done:
                new = self.decoder.step().get(slot.row, [])
                result.token_ids.extend(new)
                if new:
                    piece = ""
                    if text is not None:  # the stop token ends the text; it is not part of it
                        piece = text.push(new[:-1] if slot.stop_reason == "eos" else new)
                        piece += text.flush() if slot.done else ""
                    yield Step(token_ids=new, text=piece)
        finally:
            self.decoder.release(slot)
            self._finish(slot, result)
            if tokenizer is not None:
                generated = result.token_ids
                result.text = tokenizer.decode(generated[:-1] if result.stop_reason == "eos" else generated)

    def media_encoder(self) -> MediaEncoder:
        """The model's media towers and their settings (loaded on first use); its `prepare` raises
        MediaError for media whose tower the model lacks."""
        if self.media is None:
            from ..media.prompt import MediaTokens
            from .media import load_media_encoder

            options = self.load_options
            model = options.model if options is not None else None
            if model is None:
                raise UsageError("images need a model loaded by gemma_mtp.load (its path names the tower)")
            self.media = load_media_encoder(
                model,
                dtype=options.dtype,
                device=str(self.target.device),
                bidirectional=self.config.raw.get("use_bidirectional_attention"),
                mmproj=self.mmproj,
                vocab_size=self.config.vocab_size,
                tokens=None if self.tokenizer is None else MediaTokens.from_vocab(self.tokenizer.token_to_id),
            )
        return self.media

    def _finish(self, slot: Slot, result: Result) -> None:
        result.n_generated = len(result.token_ids)
        result.stop_reason = slot.stop_reason or "cancelled"
        result.timings = slot_timings(slot, load_s=self.load_s)
        if slot.spec.type != "none":
            result.speculative = slot.stats.to_dict()
            self.stats.setdefault(slot.spec.type, SpecStats(type=slot.spec.type)).merge(slot.stats)

    def generate(
        self,
        prompt: list[int] | str,
        *,
        n_predict: int = 128,
        sampling: SamplingParams | None = None,
        spec: SpecOptions | None = None,
        images: Sequence[ImageInput] = (),
        audio: Sequence[AudioInput] = (),
    ) -> Result:
        result = Result()
        steps = self.stream(
            prompt,
            n_predict=n_predict,
            sampling=sampling,
            spec=spec,
            result=result,
            images=images,
            audio=audio,
        )
        for _ in steps:
            pass
        return result
