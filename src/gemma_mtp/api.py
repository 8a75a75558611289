"""The Python API: `load(model, draft=None, **options) -> Engine`; `Engine.generate` / `Engine.stream`.

`load` is the only way the surfaces get an `Engine` (`engine/engine.py`)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import native
from .config import AssistantConfig, TextConfig
from .engine.engine import Engine
from .engine.graphs import check_graphs_device
from .engine.options import LoadOptions
from .engine.results import Result, Step, Timings
from .errors import ModelFormatError, UsageError
from .gguf.formats import GGUF, model_format
from .models.gemma import GemmaModel
from .models.head_build import install_output_head
from .speculative.base import SpecOptions
from .threads import set_threads
from .weights.hf import LoadReport, load_hf_model
from .weights.placement import resolve_device

__all__ = ["load", "Engine", "LoadOptions", "Result", "Step", "Timings", "SpecOptions"]


def _load_any(
    path: str | Path,
    *,
    quantized: bool | None = None,
    kernels: dict[str, str] | None = None,
    n_cpu_moe: int = 0,
    **options,
) -> tuple[torch.nn.Module, TextConfig | AssistantConfig, LoadReport]:
    """A GGUF file or an HF directory; `quantized`/`kernels`/`n_cpu_moe` apply to GGUF files only."""
    path = Path(path)
    if model_format(path) == GGUF:
        from .weights.gguf_loader import load_gguf_model

        return load_gguf_model(path, quantized=quantized, kernels=kernels, n_cpu_moe=n_cpu_moe, **options)
    return load_hf_model(path, **options)


def _fit(options: LoadOptions) -> LoadOptions:
    """On CUDA with GGUF files, `-ngl auto` as the placement plan says, checked before loading
    (a PlacementError says what would fit); elsewhere the options as they are."""
    device = resolve_device(options.device)
    if device.type != "cuda" or model_format(Path(options.model)) != GGUF:
        return options
    from .weights.placement import device_capacity, gguf_sizes, plan_placement

    sizes = {"dtype": options.dtype, "ctx_batch": options.max_batch, "quantized": options.quantized}
    target, _ = gguf_sizes(options.model, **sizes)
    drafter = None
    if options.model_draft is not None and model_format(Path(options.model_draft)) == GGUF:
        drafter, _ = gguf_sizes(options.model_draft, **sizes)
    plan = plan_placement(
        target,
        drafter,
        capacity=device_capacity(device),
        ctx=options.ctx_size,
        n_gpu_layers=options.n_gpu_layers,
        n_gpu_layers_draft=options.n_gpu_layers_draft if drafter is not None else None,
        n_cpu_moe=options.n_cpu_moe,
    )
    draft = plan.n_gpu_layers_draft if drafter is not None else options.n_gpu_layers_draft
    return dataclasses.replace(options, n_gpu_layers=plan.n_gpu_layers, n_gpu_layers_draft=draft)


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
    options: LoadOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    reuse_target: Engine | None = None,
    **fields,
) -> Engine:
    """Load a target (and optionally its drafter) from HF directories or GGUF files.

    ``options`` (`LoadOptions`) says how; keyword ``fields`` override single fields of it (e.g.
    ``load(path, dtype="float32", ctx_size=1024)``), and ``model``/``draft`` override its
    ``model``/``model_draft``. ``mmproj``: the media towers as llama.cpp's mmproj GGUF (for a GGUF
    target; loaded on the first image). ``progress(n_loaded, n_total)`` is called as the target's tensors
    load (for a progress bar). ``quantized``/``quant_kernels`` (GGUF only): keep quantized weights
    quantized (default: on the CPU) and per-type kernel overrides such as ``{"Q8_0": "int8"}`` (see
    `quant.policy`). With ``dtype="auto"`` the drafter runs in the target's dtype (they share the KV
    cache). ``reuse_target``: an engine whose target (already loaded) the new engine shares, so one
    target can be paired with several drafters without loading it again.
    """
    if "kernels" in fields:  # the Python API's older spelling of quant_kernels
        fields["quant_kernels"] = fields.pop("kernels")
    if model is not None:
        fields["model"] = str(model)
    if draft is not None:
        fields["model_draft"] = str(draft)
    try:
        options = dataclasses.replace(options or LoadOptions(), **fields)
    except TypeError as exc:
        raise UsageError(f"load(): {exc}") from None
    if options.model is None:
        raise UsageError(
            "no model given: pass -m/--model with a Hugging Face model directory or a .gguf file"
        )
    if options.mmproj is not None and not Path(options.mmproj).is_file():
        raise UsageError(f"--mmproj {options.mmproj}: no such file")
    if options.cuda_graphs:  # refused before loading: on the CPU only its eager path runs (tests)
        check_graphs_device(resolve_device(options.device))
    t0 = time.perf_counter()
    if options.threads is not None:  # the surfaces pass theirs (-t, default: the physical cores)
        set_threads(options.threads)
    if resolve_device(options.device).type == "cpu":
        # the native kernels, built here if this machine has none yet: a first build is part of
        # loading, never of the first forward (which would count it in prompt_ms)
        native.module()
    if reuse_target is not None:
        target, config, report = reuse_target.target, reuse_target.config, reuse_target.load_report
    else:
        options = _fit(options)
        target, config, report = _load_any(
            options.model,
            dtype=options.dtype,
            device=options.device,
            n_gpu_layers=options.n_gpu_layers,
            progress=progress,
            quantized=options.quantized,
            kernels=options.quant_kernels,
            n_cpu_moe=options.n_cpu_moe,
        )
    if isinstance(config, AssistantConfig):
        raise ModelFormatError(
            f"{options.model}: this is an assistant (drafter) model, not a target; pass it with "
            "-md/--model-draft and give its target model with -m"
        )
    if reuse_target is None and isinstance(target, GemmaModel):
        notice = install_output_head(target, options.head)
        if notice:
            report.notices.append(notice)
    drafter = None if options.model_draft is None else _load_drafter(options, target)
    engine = Engine(
        target,
        config,
        ctx_size=options.ctx_size,
        stop_ids=_stop_ids(Path(options.model), config),
        drafter=drafter,
        max_batch=options.max_batch,
        cuda_graphs=options.cuda_graphs,
    )
    if options.cuda_graphs and report is not None:  # said, not silent: what takes the static step
        report = dataclasses.replace(report, notices=[*report.notices, engine.decoder.notice])
    engine.load_report = report
    engine.load_options = options
    engine.mmproj = options.mmproj
    engine.threads = torch.get_num_threads()
    engine.load_s = time.perf_counter() - t0
    return engine


def _load_drafter(options: LoadOptions, target: torch.nn.Module) -> torch.nn.Module:
    dtype, quantized = options.dtype, options.quantized
    if dtype == "auto":  # the drafter reads the target's KV and hidden states: same dtype
        dtype = _dtype_name(target.dtype)
        if quantized is None and target.device.type == "cpu":
            quantized = True
    drafter, _, _ = _load_any(
        options.model_draft,
        dtype=dtype,
        device=options.device,
        n_gpu_layers=options.n_gpu_layers_draft,
        quantized=quantized,
        kernels=options.quant_kernels,
    )
    return drafter
