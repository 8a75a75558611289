"""`general.*` metadata of a converted checkpoint, by the rules llama.cpp's converter applies
(`ModelBase.prepare_metadata`): gguf-py's `Metadata.load` heuristics over the model card
(README.md), config.json's `_name_or_path` and the directory name; `general.name` falls back to the
directory name; `general.size_label` from the parameter count (`gguf.size_label`, experts counted
per expert as `GGUFWriter.get_total_parameter_count` does). gguf-py is the single source of those
rules, so we call it rather than restate them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, Metadata, size_label

from .writer import Entry

__all__ = ["general_entries"]


def _parameter_counts(arch: str, shapes: Iterable[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, expert, expert_count) of tensors of these logical (numpy-order) shapes."""
    counter = GGUFWriter(None, arch)
    for name, shape in shapes:
        counter.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    return counter.get_total_parameter_count()


def general_entries(src_dir: Path, arch: str, shapes: Iterable[tuple[str, tuple[int, ...]]]) -> list[Entry]:
    """`general.name`, `general.size_label` and whatever else the model card or the names tell
    (basename, finetune, version, license, tags, ...), as llama.cpp's converter writes them."""
    total, shared, expert, n_experts = _parameter_counts(arch, shapes)
    metadata = Metadata.load(None, src_dir, None, total)
    if metadata.name is None:
        metadata.name = src_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = size_label(total, shared, expert, n_experts)
    recorder = GGUFWriter(None, arch)
    metadata.set_gguf_meta_model(recorder)
    return [
        Entry(key, value.value, value.type, value.sub_type)
        for key, value in recorder.kv_data[0].items()
        if key != "general.architecture"
    ]
