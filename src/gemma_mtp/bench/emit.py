"""A measured profile as launch flags for engines that serve the same files at scale
(`gemma-mtp bench --emit llama-server|vllm|sglang`).

The names are each engine's own, checked against its source:
- llama-server (llama.cpp's `common/arg.cpp`, as vendored in llama-cpp-python 0.3.36):
  `--spec-type draft-mtp|draft-simple|ngram-simple`, `-md`, `--spec-draft-n-max`,
  `--spec-draft-p-min`; ngram-simple drafts `--spec-ngram-simple-size-m` tokens after a match of
  `--spec-ngram-simple-size-n`.
- vLLM: `--speculative-config '{"method": "mtp"|"draft_model"|"ngram", "model": ...,
  "num_speculative_tokens": N}'` (+ `prompt_lookup_max/min` for ngram); Gemma 4 assistants go
  through its MTP path.
- SGLang: `--speculative-algorithm NEXTN` (promoted to its Gemma 4 FROZEN_KV_MTP for an assistant)
  | STANDALONE | NGRAM, `--speculative-draft-model-path`, `--speculative-num-steps N`,
  `--speculative-eagle-topk 1`, `--speculative-num-draft-tokens N+1`.
Settings an engine has no flag for (p_min outside llama.cpp) are named in the notes, not dropped
silently.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..speculative.options import SpecOptions

__all__ = ["ENGINES", "Launch", "launch_flags"]

ENGINES = ("llama-server", "vllm", "sglang")
_LLAMA_TYPES = {"mtp": "draft-mtp", "draft": "draft-simple", "ngram": "ngram-simple"}
_VLLM_METHODS = {"mtp": "mtp", "draft": "draft_model", "ngram": "ngram"}
_SGLANG_ALGORITHMS = {"mtp": "NEXTN", "draft": "STANDALONE", "ngram": "NGRAM"}
_NGRAM = SpecOptions()  # our n-gram lookup sizes


@dataclass
class Launch:
    engine: str
    argv: list[str]
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        return shlex.join(self.argv)


def launch_flags(
    engine: str, *, target: str, strategy: str, drafter: str | None, n_max: int | None, p_min: float | None
) -> Launch:
    """The engine's server command for these settings (strategy: none | mtp | draft | ngram)."""
    if engine not in ENGINES:
        raise UsageError(f"--emit {engine!r}: use one of {', '.join(ENGINES)}")
    if strategy in ("mtp", "draft") and not drafter:
        raise UsageError(f"the profile's strategy {strategy} names no drafter file")
    n = n_max or _NGRAM.n_max
    build = {"llama-server": _llama_server, "vllm": _vllm, "sglang": _sglang}[engine]
    launch = build(target, strategy, drafter, n, p_min or 0.0)
    if engine != "llama-server" and any(Path(p).suffix == ".gguf" for p in (target, drafter) if p):
        launch.notes.append(
            f"{engine} serves Hugging Face checkpoints: replace the .gguf paths with the HF directories "
            "(or hub ids) of the same models"
        )
    return launch


def _llama_server(target: str, strategy: str, drafter: str | None, n: int, p_min: float) -> Launch:
    argv = ["llama-server", "-m", target]
    notes = []
    if strategy in ("mtp", "draft"):
        argv += ["--spec-type", _LLAMA_TYPES[strategy], "-md", str(drafter), "--spec-draft-n-max", str(n)]
        if p_min > 0:
            argv += ["--spec-draft-p-min", f"{p_min:g}"]
    elif strategy == "ngram":
        argv += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(_NGRAM.ngram_max)]
        argv += ["--spec-ngram-simple-size-m", str(n)]
        notes.append(
            "llama.cpp's ngram-simple matches the last size-n tokens exactly (ours tries "
            f"{_NGRAM.ngram_max} down to {_NGRAM.ngram_min}): its acceptance can differ"
        )
    return Launch("llama-server", argv, notes)


def _vllm(target: str, strategy: str, drafter: str | None, n: int, p_min: float) -> Launch:
    argv = ["vllm", "serve", target]
    notes = []
    if strategy != "none":
        config: dict[str, object] = {"method": _VLLM_METHODS[strategy]}
        if strategy in ("mtp", "draft"):
            config["model"] = drafter
        config["num_speculative_tokens"] = n
        if strategy == "ngram":
            config |= {"prompt_lookup_max": _NGRAM.ngram_max, "prompt_lookup_min": _NGRAM.ngram_min}
        argv += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
        if p_min > 0:
            notes.append(f"vLLM has no draft confidence threshold: p_min {p_min:g} is not applied")
    return Launch("vllm", argv, notes)


def _sglang(target: str, strategy: str, drafter: str | None, n: int, p_min: float) -> Launch:
    argv = ["python", "-m", "sglang.launch_server", "--model-path", target]
    notes = []
    if strategy != "none":
        argv += ["--speculative-algorithm", _SGLANG_ALGORITHMS[strategy]]
        if strategy in ("mtp", "draft"):
            argv += ["--speculative-draft-model-path", str(drafter)]
            argv += ["--speculative-num-steps", str(n), "--speculative-eagle-topk", "1"]
        # a chain of n drafts after the root token; NGRAM counts only the drafts
        argv += ["--speculative-num-draft-tokens", str(n if strategy == "ngram" else n + 1)]
        if strategy == "ngram":
            notes.append("SGLang's NGRAM runs on CUDA only")
        if p_min > 0:
            notes.append(f"SGLang has no draft confidence threshold: p_min {p_min:g} is not applied")
    return Launch("sglang", argv, notes)
