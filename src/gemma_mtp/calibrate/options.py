"""What an imatrix run takes besides the models and the text (torch-free: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["ImatrixOptions", "IMATRIX_DEFAULTS"]

N_DRAFT = 3  # speculative.options.SpecOptions().n_max, llama.cpp's --spec-draft-n-max default


@dataclass(frozen=True, kw_only=True)
class ImatrixOptions:
    """llama-imatrix's knobs (its defaults) and the drafter's draft length."""

    chunk_size: int = 512  # -c/--ctx-size: tokens per chunk
    max_chunks: int | None = None  # --chunks: at most this many (None: every whole chunk)
    n_draft: int = N_DRAFT  # --spec-draft-n-max: draft steps per position (drafters)
    process_output: bool = False  # --process-output: the output head too
    output_frequency: int = 10  # --output-frequency: write the file every N chunks

    def __post_init__(self) -> None:
        if self.chunk_size < 2:
            raise UsageError(f"-c/--ctx-size {self.chunk_size}: a chunk needs at least 2 tokens")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise UsageError(f"--chunks {self.max_chunks}: give at least 1 (or -1 for all)")
        if self.n_draft < 1:
            raise UsageError(f"--spec-draft-n-max {self.n_draft}: a drafter drafts at least 1 token")
        if self.output_frequency < 1:
            raise UsageError(f"--output-frequency {self.output_frequency}: give at least 1")


IMATRIX_DEFAULTS = ImatrixOptions()
