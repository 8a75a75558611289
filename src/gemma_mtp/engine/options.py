"""How to load a target and its drafter: one object, the single source of the load defaults.

`gemma_mtp.load` takes it; every surface builds it once from the flags `cli.model_args` declares
(-m, -md, --device, --dtype, -ngl, -ngld, --n-cpu-moe, -c, -t, --quantized, --quant-kernels,
--cuda-graphs, --head, and --mmproj on run, chat and serve), and the server sets ``max_batch`` to its slot count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["LoadOptions", "GRAPHS_EAGER_ENV", "HEAD_MODES"]

HEAD_MODES = ("auto", "full", "pruned")  # as models.head_build.HEAD_MODES (this module stays torch-free)

GRAPHS_EAGER_ENV = "GEMMA_MTP_GRAPHS_EAGER"  # "1": --cuda-graphs off CUDA runs its static path eagerly


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    model: str | None = None  # HF directory or .gguf file of the target
    model_draft: str | None = None  # MTP assistant or draft model
    mmproj: str | None = None  # llama.cpp's mmproj GGUF: the media towers of a GGUF target
    dtype: str = "auto"
    device: str = "auto"
    n_gpu_layers: int | None = None  # None: auto (as many as fit, GGUF on CUDA); negative: all
    n_gpu_layers_draft: int | None = None  # None: all of the drafter
    n_cpu_moe: int = 0  # the MoE experts of the first N target layers stay on the CPU
    ctx_size: int = 4096  # tokens per sequence
    threads: int | None = (
        None  # CPU threads; None: leave torch's setting (the CLI passes -t, default: physical cores)
    )
    quantized: bool | None = None  # GGUF only; None: the loader's default (quantized on the CPU)
    quant_kernels: dict[str, str] | None = None  # GGUF only; per-type kernel, e.g. {"Q8_0": "int8"}
    max_batch: int = 1  # sequences decoded together (the server's slots)
    # the output head for greedy decoding: "pruned" computes only the rows that can win (exact, the
    # same tokens: `models/head.py`), "full" every row; "auto": the full head for now (the pruned one
    # saved too little on the CPU it was measured on: benchmarks/README.md, bench_head.py)
    head: str = "auto"
    cuda_graphs: bool = False  # decode/verify rounds as captured CUDA graphs (engine/graph_decoder.py)

    def __post_init__(self) -> None:
        if self.ctx_size < 2:
            raise UsageError(f"-c/--ctx-size {self.ctx_size} is too small; use at least 2")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"-t/--threads must be >= 1, got {self.threads}")
        if self.n_cpu_moe < 0:
            raise UsageError(f"--n-cpu-moe must be >= 0, got {self.n_cpu_moe}")
        if self.head not in HEAD_MODES:
            raise UsageError(f"--head {self.head!r}: choose one of {', '.join(HEAD_MODES)}")
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.cuda_graphs and self.device == "cpu" and os.environ.get(GRAPHS_EAGER_ENV) != "1":
            raise UsageError(
                "--cuda-graphs needs --device cuda (or auto on a CUDA machine); drop it on the CPU "
                f"(or set {GRAPHS_EAGER_ENV}=1 to run its static path eagerly, for tests)"
            )
