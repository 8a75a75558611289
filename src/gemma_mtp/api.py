"""The Python API: `load(model, draft=None, **options) -> Engine`; `Engine.generate` / `Engine.stream`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import AssistantConfig, TextConfig
from .engine.plain import decode_plain
from .engine.results import Result, Step, Timings
from .errors import ContextOverflowError, ModelFormatError, UsageError
from .sampling import SamplingParams, make_generator
from .weights.hf import LoadReport, load_hf_model

__all__ = ["load", "Engine", "Result", "Step", "Timings"]


def _load_any(path: str | Path, **options) -> tuple[torch.nn.Module, TextConfig | AssistantConfig, LoadReport]:
    path = Path(path)
    if path.suffix == ".gguf":
        raise ModelFormatError(f"{path}: GGUF files are not supported by this version yet; use a HF directory")
    return load_hf_model(path, **options)


def _stop_ids(path: Path, config: TextConfig) -> frozenset[int]:
    """EOS ids from config.json plus generation_config.json (Gemma 4 declares 1, 106 and 50)."""
    ids = set(config.eos_token_ids)
    gen = path / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{gen}: cannot read ({exc})") from None
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return frozenset(int(i) for i in ids)


def load(
    model: str | Path | None = None,
    draft: str | Path | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    n_gpu_layers: int | None = None,
    n_gpu_layers_draft: int | None = None,
    ctx_size: int = 4096,
) -> Engine:
    """Load a target (and optionally its drafter) from HF directories."""
    if model is None:
        raise UsageError("no model given: pass -m/--model with a Hugging Face model directory")
    if ctx_size < 2:
        raise UsageError(f"-c/--ctx-size {ctx_size} is too small; use at least 2")
    t0 = time.perf_counter()
    target, config, report = _load_any(model, dtype=dtype, device=device, n_gpu_layers=n_gpu_layers)
    if isinstance(config, AssistantConfig):
        raise ModelFormatError(
            f"{model}: this is an assistant (drafter) model, not a target; pass it with -md/--model-draft "
            "and give its target model with -m"
        )
    drafter = draft_config = None
    if draft is not None:
        drafter, draft_config, _ = _load_any(draft, dtype=dtype, device=device, n_gpu_layers=n_gpu_layers_draft)
    engine = Engine(target, config, ctx_size=ctx_size, stop_ids=_stop_ids(Path(model), config))
    engine.drafter, engine.draft_config = drafter, draft_config
    engine.load_report = report
    engine.load_s = time.perf_counter() - t0
    return engine


class Engine:
    """Owns a target (and drafter), its KV cache, and runs generations one at a time."""

    def __init__(self, target, config: TextConfig, *, ctx_size: int, stop_ids: frozenset[int]) -> None:
        self.target = target
        self.config = config
        self.ctx_size = ctx_size
        self.stop_ids = stop_ids
        self.drafter = None
        self.draft_config = None
        self.load_report: LoadReport | None = None
        self.load_s = 0.0
        self._cache = None

    def _prompt_ids(self, prompt: list[int] | str) -> list[int]:
        if isinstance(prompt, str):
            raise UsageError("text prompts need a tokenizer, which this version does not have; pass token ids")
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

    def _fresh_cache(self):
        if self._cache is None:
            self._cache = self.target.make_cache(batch_size=1, max_context=self.ctx_size, max_draft=8)
        self._cache.reset()
        return self._cache

    def stream(
        self,
        prompt: list[int] | str,
        *,
        n_predict: int = 128,
        sampling: SamplingParams | None = None,
        result: Result | None = None,
    ) -> Iterator[Step]:
        sampling = sampling or SamplingParams()
        ids = self._prompt_ids(prompt)
        result = result if result is not None else Result()
        result.n_prompt = len(ids)
        result.timings.load_s = self.load_s
        generator = None if sampling.greedy else make_generator(sampling.seed, self.target.device)
        yield from decode_plain(
            self.target,
            self._fresh_cache(),
            ids,
            n_predict=n_predict,
            sampling=sampling,
            stop_ids=self.stop_ids,
            generator=generator,
            result=result,
        )

    def generate(
        self, prompt: list[int] | str, *, n_predict: int = 128, sampling: SamplingParams | None = None
    ) -> Result:
        result = Result()
        for _ in self.stream(prompt, n_predict=n_predict, sampling=sampling, result=result):
            pass
        return result


