"""GGUF files of a released Gemma 4 shape with random weights, written tensor by tensor.

Names, metadata and shapes come from the code path `convert` uses (`empty_model` for the tensors,
`gguf.names.name_map`, `gguf.writer.metadata_entries`); the per-tensor types are `quantize`'s
llama-quantize mix (`tools.quantize.plan_types`) over the types llama.cpp's converter would have
written (F32 vectors and router, BF16 matrices); the bytes are `gguf.codecs.encode`'s.

Values: matrices normal with std 1/sqrt(fan_in) (fan_in = the row length), norm scales 1 + 0.05 N,
the scalars 1. Every tensor draws from its own generator, seeded by (seed, name), so a file is
deterministic and does not depend on the tensor order. Memory stays small: a tensor is made a slab
of rows at a time, encoded and written before the next slab.

`pool_blocks` (the default, for speed): a quantized tensor's blocks are drawn at random from a pool
of `pool_blocks` blocks that were encoded from such values (one pool per type and std), instead of
encoding every block; our numpy encoders run at 2-15 million values/s, which would take hours for
26B/31B. Speed does not depend on the values; with `pool_blocks=0` every block is encoded.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

from ..config import FULL, AssistantConfig, TextConfig
from ..gguf.atomic import atomic_write
from ..gguf.codecs import encode
from ..gguf.keys import K
from ..gguf.names import ROPE_FREQS, name_map
from ..gguf.reader import open_gguf
from ..gguf.writer import F32_MATRICES, Entry, metadata_entries, rope_freqs_table
from .convert import CENTROID_TENSORS
from .quantize import FileType, TensorSpec, plan_types, resolve_file_type

__all__ = ["PlannedTensor", "plan_tensors", "write_shaped", "ShapedFile", "DEFAULT_POOL_BLOCKS"]

T = GGMLQuantizationType
DEFAULT_POOL_BLOCKS = 1 << 15
SLAB_VALUES = 1 << 22  # values made at a time (16 MB of float32)
NORM_NOISE = 0.05
NORM = re.compile(r"norm(_\d+)?\.weight$")  # RMS norm scales (the MoE block's `..._layernorm_1` too)
SOURCE_MATRIX_TYPE = T.BF16  # what llama.cpp's converter writes from the bf16 release (--outtype auto)
SYNTHETIC_KEY = "gemma_mtp.synthetic_weights"  # says what made the file; engines ignore it


class PlannedTensor(NamedTuple):
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows..., row length)
    qtype: GGMLQuantizationType
    init: str  # "normal" | "norm" | "one" | "ordering" | "rope_freqs"

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return rows * (self.shape[-1] // block) * size


def _init(ours: str, ndim: int) -> str:
    if ours.endswith("token_ordering"):
        return "ordering"
    if NORM.search(ours):
        return "norm"
    if ours.endswith(("layer_scalar", "router.scale", "router.per_expert_scale")):
        return "one"
    if ndim >= 2:
        return "normal"
    raise ValueError(f"no initializer for tensor {ours}")


def _source_type(name: str, ndim: int, init: str) -> GGMLQuantizationType:
    """The type llama.cpp's converter gives a tensor (`gguf.writer.encode_tensor`'s rules)."""
    if init == "ordering":
        return T.I32
    if ndim <= 1 or name.endswith(F32_MATRICES) or not name.endswith(".weight"):
        return T.F32
    return SOURCE_MATRIX_TYPE


def plan_tensors(
    config: TextConfig | AssistantConfig, file_type: FileType, *, keep_centroids: bool = False
) -> list[PlannedTensor]:
    """Every tensor of the model's GGUF in `file_type`'s mix (mainline layout for an assistant)."""
    from ..weights.gguf_loader import empty_model  # torch: only when a file is made

    names = name_map(config, "mainline" if config.is_assistant else None)
    rows: list[tuple[str, tuple[int, ...], str]] = []
    for ours, t in empty_model(config).state_dict().items():
        if ours in CENTROID_TENSORS and not keep_centroids:
            continue
        rows.append((names[ours], tuple(int(d) for d in t.shape), _init(ours, t.dim())))
    text = config.text if isinstance(config, AssistantConfig) else config
    full = [s for s in text.layers if s.kind == FULL]
    if full:
        rows.append((ROPE_FREQS, (full[0].head_dim // 2,), "rope_freqs"))
    specs = [TensorSpec(n, tuple(reversed(s)), _source_type(n, len(s), i)) for n, s, i in rows]
    types, _ = plan_types(specs, file_type, n_layers=text.num_layers, n_expert=text.num_experts)
    return [PlannedTensor(n, s, types[n], i) for n, s, i in rows]


# ------------------------------------------------------------------------------------- values


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _values(t: PlannedTensor, rng: np.random.Generator, n_rows: int, text: TextConfig) -> np.ndarray:
    shape = (n_rows, t.shape[-1])
    if t.init == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(t.shape[-1] ** -0.5)
    if t.init == "norm":
        return 1 + rng.standard_normal(shape, dtype=np.float32) * np.float32(NORM_NOISE)
    if t.init == "one":
        return np.ones(shape, dtype=np.float32)
    if t.init == "rope_freqs":
        full = next(s for s in text.layers if s.kind == FULL)
        return rope_freqs_table(full.head_dim, text.rope[FULL].partial_rotary_factor).reshape(shape)
    raise ValueError(f"tensor {t.name}: no values for init {t.init!r}")


def _raw(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == T.F32:
        return values.view(np.uint8)
    return encode(values, qtype)


class _Pools:
    """One pool of encoded blocks per (type, std): `blocks` random blocks as `encode` makes them."""

    def __init__(self, seed: int, n_blocks: int) -> None:
        self.seed, self.n_blocks = seed, n_blocks
        self.pools: dict[tuple[GGMLQuantizationType, int], np.ndarray] = {}

    def usable(self, t: PlannedTensor) -> bool:
        return self.n_blocks > 0 and t.init == "normal" and t.qtype not in (T.F32, T.F16, T.BF16)

    def draw(self, t: PlannedTensor, rng: np.random.Generator, n_rows: int) -> np.ndarray:
        block, size = GGML_QUANT_SIZES[t.qtype]
        key = (t.qtype, t.shape[-1])
        if key not in self.pools:
            std = np.float32(t.shape[-1] ** -0.5)
            values = _rng(self.seed, "pool", t.qtype.name, t.shape[-1]).standard_normal(
                (self.n_blocks, block), dtype=np.float32
            )
            self.pools[key] = encode(values * std, t.qtype)
        pool = self.pools[key]
        per_row = t.shape[-1] // block
        picks = rng.integers(0, self.n_blocks, size=n_rows * per_row)
        return pool[picks].reshape(n_rows, per_row * size)


def _slabs(t: PlannedTensor, text: TextConfig, seed: int, pools: _Pools, vocab: int) -> Iterator[np.ndarray]:
    """The tensor's bytes, a slab of rows at a time."""
    rng = _rng(seed, t.name)
    if t.init == "ordering":  # the centroid head's cluster -> token table: a permutation
        yield rng.permutation(vocab).astype(np.int32).view(np.uint8)
        return
    n_rows = int(np.prod(t.shape[:-1], dtype=np.int64))
    step = max(1, SLAB_VALUES // t.shape[-1])
    for start in range(0, n_rows, step):
        n = min(step, n_rows - start)
        if pools.usable(t):
            yield pools.draw(t, rng, n)
        else:
            yield _raw(_values(t, rng, n, text), t.qtype)


# ------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class ShapedFile:
    path: Path
    tensors: list[PlannedTensor]
    n_bytes: int


def _entries(
    config: TextConfig | AssistantConfig,
    file_type: FileType,
    *,
    keep_centroids: bool,
    name: str,
    vocab_from: Path | None,
    provenance: str,
) -> tuple[str, list[Entry]]:
    centroid = isinstance(config, AssistantConfig) and config.use_ordered_embeddings
    if centroid and not keep_centroids:
        # llama.cpp's loader refuses the centroid tensors: a dense head, with keys saying it had one
        config = replace(config, use_ordered_embeddings=False)
    arch, entries = metadata_entries(config, layout="mainline", had_centroids=centroid and not keep_centroids)
    entries = [e for e in entries if e.key != K.FILE_TYPE]
    entries += [
        Entry(K.FILE_TYPE, int(file_type.file_type), GGUFValueType.UINT32),
        Entry("general.type", "model", GGUFValueType.STRING),
        Entry("general.name", name, GGUFValueType.STRING),
        Entry(SYNTHETIC_KEY, provenance, GGUFValueType.STRING),
    ]
    if vocab_from is not None:
        have = {e.key for e in entries}
        vocab = open_gguf(vocab_from)
        entries += [
            Entry(key, f.value, f.type, f.sub_type)
            for key, f in vocab.fields.items()
            if key.startswith("tokenizer.") and key not in have
        ]
    return arch, entries


def write_shaped(
    path: str | Path,
    config: TextConfig | AssistantConfig,
    type_name: str,
    *,
    seed: int = 0,
    name: str = "gemma-4 shaped",
    pool_blocks: int = DEFAULT_POOL_BLOCKS,
    keep_centroids: bool = False,
    vocab_from: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ShapedFile:
    """Write `config`'s model with random weights in `type_name` (a `quantize` TYPE) to `path`.
    `vocab_from`: a GGUF whose `tokenizer.*` keys are copied (its vocabulary must be the model's);
    `progress(bytes_done, bytes_total, tensor)` after each slab."""
    path = Path(path)
    file_type = resolve_file_type(type_name, drafter=config.is_assistant)
    tensors = plan_tensors(config, file_type, keep_centroids=keep_centroids)
    provenance = (
        f"random weights (seed {seed}, normal std 1/sqrt(fan_in)); "
        + (
            f"blocks drawn from pools of {pool_blocks} encoded blocks"
            if pool_blocks
            else "every block encoded"
        )
        + "; for speed measurements only"
    )
    arch, entries = _entries(
        config,
        file_type,
        keep_centroids=keep_centroids,
        name=name,
        vocab_from=vocab_from,
        provenance=provenance,
    )
    text = config.text if isinstance(config, AssistantConfig) else config
    pools, total, done = _Pools(seed, pool_blocks), sum(t.n_bytes for t in tensors), 0
    with atomic_write(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        for e in entries:
            if e.key != K.ARCHITECTURE:
                writer.add_key_value(e.key, e.value, e.type, sub_type=e.sub_type)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        for t in tensors:
            writer.write_padding(fout, fout.tell())
            written = 0
            for slab in _slabs(t, text, seed, pools, text.vocab_size):
                fout.write(np.ascontiguousarray(slab).data)
                written += slab.nbytes
                done += slab.nbytes
                if progress is not None:
                    progress(done, total, t.name)
            if written != t.n_bytes:
                raise ValueError(f"tensor {t.name}: {written} bytes made, {t.n_bytes} announced")
            writer.write_padding(fout, t.n_bytes)
        writer.close()
    return ShapedFile(path=path, tensors=tensors, n_bytes=path.stat().st_size)
