"""Helpers shared by the GGUF tests (no tests here): running our models, rewriting GGUF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gemma_mtp.cache import SharedKV
from gemma_mtp.config import FULL, SLIDING
from gemma_mtp.gguf.reader import open_gguf
from gemma_mtp.gguf.writer import Entry, write_gguf


def realigned(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every weight into fresh memory. BLAS kernels round differently with the alignment of a
    weight's address (safetensors mmaps are not 64-byte aligned), so two loads of the same numbers
    compare bit for bit only once both live in fresh allocations."""
    for module in model.modules():
        for _, param in list(module.named_parameters(recurse=False)):
            param.data = param.data.clone()
        for name, buf in list(module.named_buffers(recurse=False)):
            setattr(module, name, buf.clone())
    return model


@torch.no_grad()
def target_logits(model, tokens: torch.Tensor, decode_steps: int = 3) -> torch.Tensor:
    """Prefill all but the last `decode_steps` tokens, then decode them one by one: [1, T, V]."""
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=4)
    split = tokens.shape[1] - decode_steps
    out = [model.logits(model(tokens[:, :split], torch.arange(split)[None], cache).hidden)]
    for p in range(split, tokens.shape[1]):
        out.append(model.logits(model(tokens[:, p : p + 1], torch.tensor([[p]]), cache).hidden))
    return torch.cat(out, dim=1)


def synthetic_shared_kv(text_config, length: int = 6, seed: int = 0) -> dict[str, SharedKV]:
    """Random target KV of the shapes an assistant reads, `length` positions, all visible."""
    gen = torch.Generator().manual_seed(seed)
    shared = {}
    for kind in (FULL, SLIDING):
        spec = next(s for s in text_config.layers if s.kind == kind)
        shape = (1, spec.kv_heads, length, spec.head_dim)
        keys, values = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        window = text_config.sliding_window if kind == SLIDING else None
        shared[kind] = SharedKV(keys, values, torch.arange(length)[None], torch.tensor([length]), window)
    return shared


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    arch: str | None = None,
    drop_keys: tuple[str, ...] = (),
    drop_tensors: tuple[str, ...] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
    replace_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Copy a GGUF with keys or tensors removed, added or replaced (raw bytes kept otherwise)."""
    gf = open_gguf(src)
    arch = arch or gf.arch
    entries = []
    for key, field in gf.fields.items():
        if key in drop_keys or key == "general.architecture":
            continue
        if key.startswith(gf.arch + "."):
            key = arch + key[len(gf.arch) :]
        entries.append(Entry(key, field.value, field.type, field.sub_type))
    replace = replace_tensors or {}
    tensors = []
    for name, t in gf.tensors.items():
        if name in drop_tensors:
            continue
        if name in replace:
            tensors.append((name, replace[name].astype(np.float32), None))
        else:
            tensors.append((name, np.asarray(t.data), t.tensor_type))
    for name, values in (extra_tensors or {}).items():
        tensors.append((name, values.astype(np.float32), None))
    return write_gguf(dst, arch, entries, tensors)
