"""Opening GGUF files: one clear error for anything that is not a whole GGUF, typed metadata access,
and tensors in numpy order (GGUF lists dims fastest-first, i.e. reversed from numpy shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor
from gguf.quants import dequantize as gguf_dequantize

from ..errors import ModelFormatError

__all__ = ["GGUFFile", "open_gguf", "tensor_shape", "tensor_values", "FLOAT_TYPES", "INT_TYPES"]

GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})
INT_TYPES = {
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class GGUFFile:
    """A memory-mapped GGUF file: `value(key)`, `arch_value(suffix)`, `tensors` by name."""

    def __init__(self, path: Path, reader: GGUFReader) -> None:
        self.path = path
        self.reader = reader
        self.fields = {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}
        self.tensors: dict[str, ReaderTensor] = {t.name: t for t in reader.tensors}
        arch = self.value("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(
                f"{path}: no general.architecture key; this GGUF does not say what model it is"
            )
        self.arch = arch

    def has(self, key: str) -> bool:
        return key in self.fields

    def value(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.value(f"{self.arch}.{suffix}", default)

    def value_type(self, key: str) -> tuple[GGUFValueType, GGUFValueType | None]:
        types = self.fields[key].types
        return types[0], (types[-1] if types[0] == GGUFValueType.ARRAY else None)


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file; any damage is one `ModelFormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, OverflowError, OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(
            f"{path}: not a readable GGUF file ({exc}); it may be truncated or damaged, download it again"
        ) from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ModelFormatError(
                f"{path}: tensor {t.name} ends at byte {t.data_offset + t.n_bytes} but the file has {size} "
                "bytes; the file is truncated, download it again"
            )
    return GGUFFile(path, reader)


def tensor_shape(t: ReaderTensor) -> tuple[int, ...]:
    """The numpy/torch shape of a tensor (GGUF stores ne0 first: the reverse)."""
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def tensor_values(t: ReaderTensor) -> np.ndarray:
    """Float tensors (any quant type) as float32, integer tensors as their integer type; numpy order."""
    shape = tensor_shape(t)
    if t.tensor_type in INT_TYPES:
        return np.asarray(t.data).view(INT_TYPES[t.tensor_type]).reshape(shape)
    try:
        values = gguf_dequantize(np.asarray(t.data), t.tensor_type)
    except NotImplementedError:
        raise ModelFormatError(
            f"tensor {t.name}: type {t.tensor_type.name} cannot be dequantized by gguf {_gguf_version()}"
        ) from None
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
