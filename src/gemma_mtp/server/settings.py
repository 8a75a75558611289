"""The server's settings: one kw-only dataclass, the single source of its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli.spec_args import SpecFlags
from ..engine.options import LoadOptions
from ..errors import UsageError

__all__ = ["ServerSettings"]


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything ``serve`` needs; the single source of the server's defaults.

    ``load`` and ``spec`` are the option objects every surface shares (`LoadOptions`, `SpecFlags`);
    the server loads with ``max_batch`` = ``parallel`` and resolves ``spec`` against what it loaded
    (each request may override it)."""

    load: LoadOptions = field(default_factory=LoadOptions)
    spec: SpecFlags = field(default_factory=SpecFlags)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8080
    parallel: int = 4  # slots: sequences decoded together in one forward
    max_queue: int = 64  # requests that may wait for a slot; beyond it, 429
    api_key: str | None = None
    alias: str | None = None
    n_predict: int = -1  # default max_tokens: until the end of the turn or a full context
    chat_template_file: str | None = None
    fallback_chat_template: str | None = None  # used when the model has none (the demo pair's)
    allow_local_media: str | None = None  # a directory whose image files requests may name

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"-np/--parallel must be >= 1, got {self.parallel}")
        if self.max_queue < 0:
            raise UsageError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.n_predict < -1:
            raise UsageError(f"-n/--n-predict must be >= -1, got {self.n_predict}")
        self.spec.check_drafter(self.load.model_draft)
        if self.allow_local_media is not None and not Path(self.allow_local_media).is_dir():
            raise UsageError(f"--allow-local-media {self.allow_local_media}: not a directory")

    @property
    def model_id(self) -> str:
        """What ``/v1/models`` lists and responses name: ``--alias``, else the model's file name."""
        if self.alias:
            return self.alias
        return Path(self.load.model).name if self.load.model else "gemma-mtp"
