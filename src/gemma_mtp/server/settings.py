"""The server's settings: one kw-only dataclass, the single source of its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..speculative.base import SpecOptions

__all__ = ["ServerSettings"]


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything ``serve`` needs; the single source of the server's defaults."""

    model: str | None = None
    model_draft: str | None = None
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8080
    parallel: int = 4  # slots: sequences decoded together in one forward
    max_queue: int = 64  # requests that may wait for a slot; beyond it, 429
    api_key: str | None = None
    alias: str | None = None
    ctx_size: int = 4096  # per slot
    n_predict: int = -1  # default max_tokens: until the end of the turn or a full context
    spec: SpecOptions = field(default_factory=SpecOptions)
    dtype: str = "auto"
    device: str = "auto"
    n_gpu_layers: int | None = None
    n_gpu_layers_draft: int | None = None
    quantized: bool | None = None  # GGUF only; None: the loader's default (quantized on the CPU)
    quant_kernels: dict[str, str] | None = None  # GGUF only; per-type kernel, e.g. {"Q8_0": "int8"}
    chat_template_file: str | None = None

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"-np/--parallel must be >= 1, got {self.parallel}")
        if self.max_queue < 0:
            raise UsageError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.n_predict < -1:
            raise UsageError(f"-n/--n-predict must be >= -1, got {self.n_predict}")
        if self.spec.type in ("mtp", "draft") and self.model_draft is None:
            raise UsageError(f"--spec-type {self.spec.type} needs a drafter: pass -md/--model-draft")

    @property
    def model_id(self) -> str:
        """What ``/v1/models`` lists and responses name: ``--alias``, else the model's file name."""
        if self.alias:
            return self.alias
        return Path(self.model).name if self.model else "gemma-mtp"
