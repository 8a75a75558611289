"""Opening GGUF files: one clear error for anything that is not a whole GGUF, typed metadata, and
memory-mapped tensors in numpy order (GGUF lists dims fastest-first: the reverse of numpy shapes).

The header is parsed here rather than with `gguf.GGUFReader`, which builds one numpy view per
array element: on a file with a 262,144-token vocabulary that is ~800k views and tens of seconds.
Numeric arrays are read in bulk; tensor data is never copied until it is dequantized.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize as gguf_dequantize

from ..errors import ModelFormatError

__all__ = ["GGUFFile", "TensorInfo", "open_gguf", "tensor_shape", "tensor_values", "FLOAT_TYPES"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})
INT_TYPES = {
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}
_SCALARS = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class Field:
    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: ne0 (fastest) first
    data_offset: int  # absolute, in the file
    n_bytes: int
    data: np.ndarray  # uint8, memory-mapped, shaped (*numpy_shape[:-1], bytes per row)


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise _Truncated
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("<Q"))).decode("utf-8", errors="replace")

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.take(size), dtype=dtype, count=count)

    def value(self, vtype: GGUFValueType) -> Field:
        if vtype == GGUFValueType.STRING:
            return Field(self.string(), vtype)
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType(self.unpack("<I"))
            count = self.unpack("<Q")
            if sub == GGUFValueType.STRING:
                return Field([self.string() for _ in range(count)], vtype, sub)
            if sub == GGUFValueType.ARRAY:
                raise ModelFormatError("nested metadata arrays are not supported")
            values = self.array(_SCALARS[sub], count)
            items = values.astype(bool).tolist() if sub == GGUFValueType.BOOL else values.tolist()
            return Field(items, vtype, sub)
        raw = self.array(_SCALARS[vtype], 1)[0]
        return Field(bool(raw) if vtype == GGUFValueType.BOOL else raw.item(), vtype)


class GGUFFile:
    """A memory-mapped GGUF file: `value(key)`, `arch_value(suffix)`, `tensors` by name."""

    def __init__(self, path: Path, fields: dict[str, Field], tensors: dict[str, TensorInfo]) -> None:
        self.path = path
        self.fields = fields
        self.tensors = tensors
        arch = self.value("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(
                f"{path}: no general.architecture key; this GGUF does not say what model it is"
            )
        self.arch = arch

    def value(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.value

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.value(f"{self.arch}.{suffix}", default)


def _parse(path: Path, mm: np.ndarray) -> GGUFFile:
    cur = _Cursor(memoryview(mm))
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    fields: dict[str, Field] = {}
    for _ in range(n_kv):
        key = cur.string()
        fields[key] = cur.value(GGUFValueType(cur.unpack("<I")))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(int(cur.unpack("<Q")) for _ in range(cur.unpack("<I")))
        infos.append((name, dims, GGMLQuantizationType(cur.unpack("<I")), cur.unpack("<Q")))
    align = int(fields["general.alignment"].value) if "general.alignment" in fields else DEFAULT_ALIGNMENT
    start = -(-cur.pos // align) * align
    tensors = {}
    for name, dims, qtype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[qtype]
        if dims[0] % block:
            raise ModelFormatError(f"{path}: tensor {name} rows of {dims[0]} do not fit {qtype.name} blocks")
        row_bytes = dims[0] // block * type_size
        n_bytes = row_bytes * int(np.prod(dims[1:], dtype=np.int64))
        begin = start + offset
        if begin + n_bytes > mm.size:
            raise ModelFormatError(
                f"{path}: tensor {name} ends at byte {begin + n_bytes} but the file has {mm.size} bytes; "
                "the file is truncated, download it again"
            )
        data = mm[begin : begin + n_bytes].reshape(*reversed(dims[1:]), row_bytes)
        tensors[name] = TensorInfo(name, qtype, dims, begin, n_bytes, data)
    return GGUFFile(path, fields, tensors)


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file; any damage is one `ModelFormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    if path.stat().st_size < 4:
        raise ModelFormatError(f"{path}: not a GGUF file (it is {path.stat().st_size} bytes long)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        return _parse(path, mm)
    except _Truncated:
        raise ModelFormatError(
            f"{path}: the GGUF header ends early; the file is truncated, download it again"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # unknown value or tensor type codes
        raise ModelFormatError(f"{path}: not a readable GGUF file ({exc}); it may be damaged") from None


def tensor_shape(t: TensorInfo) -> tuple[int, ...]:
    """The numpy/torch shape of a tensor (GGUF stores ne0 first: the reverse)."""
    return tuple(reversed(t.shape))


def tensor_values(t: TensorInfo, *, whole: bool = True) -> np.ndarray:
    """Float tensors (any quant type) as float32, integer tensors as their integer type; numpy order.
    `whole=False` decodes `t.data` as it is (a slab of rows of the tensor), without the final reshape."""
    shape = tensor_shape(t) if whole else (*t.data.shape[:-1], -1)
    if t.tensor_type in INT_TYPES:
        return t.data.view(INT_TYPES[t.tensor_type]).reshape(shape)
    try:
        values = gguf_dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise ModelFormatError(
            f"tensor {t.name}: type {t.tensor_type.name} cannot be dequantized yet"
        ) from None
    return np.asarray(values, dtype=np.float32).reshape(shape)
