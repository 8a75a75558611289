"""The Python API: `load(model, draft=None, **options) -> Engine`; `Engine.generate` / `Engine.stream`.

`load` is the only way the surfaces get an `Engine` (`engine/engine.py`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import native
from .config import AssistantConfig, TextConfig
from .engine.engine import Engine
from .engine.results import Result, Step, Timings
from .errors import ModelFormatError, UsageError
from .speculative.base import SpecOptions
from .weights.hf import LoadReport, load_hf_model
from .weights.placement import resolve_device

__all__ = ["load", "Engine", "Result", "Step", "Timings", "SpecOptions"]


def _load_any(
    path: str | Path, *, quantized: bool | None = None, kernels: dict[str, str] | None = None, **options
) -> tuple[torch.nn.Module, TextConfig | AssistantConfig, LoadReport]:
    """A GGUF file or an HF directory; `quantized`/`kernels` apply to GGUF files only."""
    path = Path(path)
    if path.suffix == ".gguf":
        from .weights.gguf_loader import load_gguf_model

        return load_gguf_model(path, quantized=quantized, kernels=kernels, **options)
    return load_hf_model(path, **options)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
    progress: Callable[[int, int], None] | None = None,
    quantized: bool | None = None,
    kernels: dict[str, str] | None = None,
) -> Engine:
    """Load a target (and optionally its drafter) from HF directories or GGUF files.

    ``progress(n_loaded, n_total)`` is called as the target's tensors load (for a progress bar).
    ``quantized``/``kernels`` (GGUF only): keep quantized weights quantized (default: on the CPU)
    and per-type kernel overrides such as ``{"Q8_0": "int8"}`` (see `quant.policy`). With
    ``dtype="auto"`` the drafter runs in the target's dtype (they share the KV cache).
    """
    if model is None:
        raise UsageError("no model given: pass -m/--model with a Hugging Face model directory")
    if ctx_size < 2:
        raise UsageError(f"-c/--ctx-size {ctx_size} is too small; use at least 2")
    t0 = time.perf_counter()
    if resolve_device(device).type == "cpu":
        # the native kernels, built here if this machine has none yet: a first build is part of
        # loading, never of the first forward (which would count it in prompt_ms)
        native.module()
    target, config, report = _load_any(
        model,
        dtype=dtype,
        device=device,
        n_gpu_layers=n_gpu_layers,
        progress=progress,
        quantized=quantized,
        kernels=kernels,
    )
    if isinstance(config, AssistantConfig):
        raise ModelFormatError(
            f"{model}: this is an assistant (drafter) model, not a target; pass it with -md/--model-draft "
            "and give its target model with -m"
        )
    drafter = None
    if draft is not None:
        draft_dtype, draft_quantized = dtype, quantized
        if dtype == "auto":  # the drafter reads the target's KV and hidden states: same dtype
            draft_dtype = _dtype_name(target.dtype)
            if quantized is None and target.device.type == "cpu":
                draft_quantized = True
        drafter, _, _ = _load_any(
            draft,
            dtype=draft_dtype,
            device=device,
            n_gpu_layers=n_gpu_layers_draft,
            quantized=draft_quantized,
            kernels=kernels,
        )
    engine = Engine(
        target, config, ctx_size=ctx_size, stop_ids=_stop_ids(Path(model), config), drafter=drafter
    )
    engine.load_report = report
    engine.load_s = time.perf_counter() - t0
    return engine
