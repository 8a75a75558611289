"""What every benchmark row carries: the machine, the files and their quant types, the code."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..gguf.formats import GGUF, model_format

__all__ = ["git_commit", "timestamp", "device_name", "weights_description", "environment"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    """The checked-out commit (short hash, `+dirty` when tracked files differ), or "unknown"."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return "unknown"
    return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def device_name(device: str) -> str:
    """`cuda: NVIDIA H100 ...` or `cpu: <model name> (<n> threads)`."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({torch.get_num_threads()} threads)"


def weights_description(path: str | Path) -> dict[str, Any]:
    """The stored types of a checkpoint: GGUF tensor types by share of bytes, or the HF dtype."""
    path = Path(path)
    if model_format(path) == GGUF:
        from ..gguf import open_gguf

        gguf = open_gguf(path)
        by_type: Counter[str] = Counter()
        for tensor in gguf.tensors.values():
            by_type[tensor.tensor_type.name] += tensor.n_bytes
        total = sum(by_type.values()) or 1
        return {
            "format": "gguf",
            "architecture": gguf.arch,
            "file_type": gguf.value("general.file_type"),
            "tensor_types": {k: round(v / total, 4) for k, v in by_type.most_common()},
            "bytes": os.path.getsize(path),
        }
    config = path / "config.json"
    dtype = None
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        dtype = data.get("dtype") or data.get("torch_dtype")
        dtype = dtype or (data.get("text_config") or {}).get("dtype")
    return {"format": "hf", "dtype": dtype}


def environment(device: str) -> dict[str, Any]:
    import torch

    from .. import __version__

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "gemma_mtp": __version__,
        "git_commit": git_commit(),
        "timestamp": timestamp(),
        "host": platform.node(),
    }
