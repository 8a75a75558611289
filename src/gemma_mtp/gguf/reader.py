"""Opening GGUF files: one clear error for anything that is not a whole GGUF, typed metadata, and
memory-mapped tensors in numpy order (GGUF lists dims fastest-first: the reverse of numpy shapes).

The header is parsed here rather than with `gguf.GGUFReader`, which builds one numpy view per
array element: on a file with a 262,144-token vocabulary that is ~800k views and tens of seconds.
Numeric arrays are read in bulk; tensor data is never copied until it is dequantized.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize as gguf_dequantize

from ..errors import ModelFormatError
from .formats import GGUF_MAGIC, access_error, is_gguf

__all__ = [
    "GGUFFile",
    "TensorInfo",
    "Field",
    "open_gguf",
    "read_metadata",
    "tensor_shape",
    "tensor_values",
    "FLOAT_TYPES",
]

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


_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Cursor:
    """Reads the header from a memory map: slices of an `mmap` are `bytes`, the fastest to decode."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def _step(self, n: int) -> int:
        start = self.pos
        if start + n > self.size:
            raise _Truncated
        self.pos = start + n
        return start

    def take(self, n: int) -> bytes:
        start = self._step(n)
        return self.buf[start : start + n]

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self._step(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self._step(8))[0]

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", "replace")

    def strings(self, count: int, *, decode: bool = True) -> list[str] | None:
        """`count` strings in a row: the token tables and merges, so one tight loop."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        items = [] if decode else None
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            end = pos + 8 + unpack(buf, pos)[0]
            if end > size:
                raise _Truncated
            if decode:
                items.append(buf[pos + 8 : end].decode("utf-8", "replace"))
            pos = end
        self.pos = pos
        return items

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=self._step(size))

    def value(self, vtype: GGUFValueType, *, decode: bool = True) -> Field | None:
        """The next value; with `decode=False` it is only stepped over (None)."""
        if vtype == GGUFValueType.STRING:
            text = self.take(self.u64())
            return Field(text.decode("utf-8", "replace"), vtype) if decode else None
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType(self.u32())
            count = self.u64()
            if sub == GGUFValueType.STRING:
                items = self.strings(count, decode=decode)
                return Field(items, vtype, sub) if decode else None
            if sub == GGUFValueType.ARRAY:
                raise ModelFormatError("nested metadata arrays are not supported")
            values = self.array(_SCALARS[sub], count)
            if not decode:
                return None
            items = values.astype(bool).tolist() if sub == GGUFValueType.BOOL else values.tolist()
            return Field(items, vtype, sub)
        raw = self.array(_SCALARS[vtype], 1)[0]
        if not decode:
            return None
        return Field(bool(raw) if vtype == GGUFValueType.BOOL else raw.item(), vtype)


class GGUFFile:
    """A memory-mapped GGUF file: `value(key)`, `arch_value(suffix)`, `tensors` by name.

    `spans` gives the byte range of each key/value record and `tensor_info_span` that of the
    tensor infos, for tools that copy parts of the header verbatim (sanitize)."""

    def __init__(
        self,
        path: Path,
        fields: dict[str, Field],
        tensors: dict[str, TensorInfo],
        *,
        spans: dict[str, tuple[int, int]] | None = None,
        tensor_info_span: tuple[int, int] = (0, 0),
    ) -> None:
        self.path = path
        self.fields = fields
        self.tensors = tensors
        self.spans = spans or {}
        self.tensor_info_span = tensor_info_span
        arch = self.value("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(
                f"{path}: no general.architecture key; this GGUF does not say what model it is"
            )
        self.arch = arch

    @property
    def alignment(self) -> int:
        return int(self.value("general.alignment", DEFAULT_ALIGNMENT))

    def value(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.value

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.value(f"{self.arch}.{suffix}", default)


def _metadata(
    path: Path, cur: _Cursor, prefix: str | tuple[str, ...] = ""
) -> tuple[int, dict[str, Field], dict[str, tuple[int, int]]]:
    """(tensor count, fields whose key starts with `prefix`, byte span of every record)."""
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    version = cur.u32()
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.u64(), cur.u64()
    fields: dict[str, Field] = {}
    spans: dict[str, tuple[int, int]] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        wanted = key.startswith(prefix)
        field = cur.value(GGUFValueType(cur.u32()), decode=wanted)
        if wanted:
            fields[key] = field
        spans[key] = (start, cur.pos)
    return n_tensors, fields, spans


def _parse(path: Path, buf: mmap.mmap) -> GGUFFile:
    cur = _Cursor(buf)
    mm = np.frombuffer(buf, dtype=np.uint8)
    n_tensors, fields, spans = _metadata(path, cur)
    ti_start = cur.pos
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.u64() for _ in range(cur.u32()))
        infos.append((name, dims, GGMLQuantizationType(cur.u32()), cur.u64()))
    ti_span = (ti_start, cur.pos)
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
    return GGUFFile(path, fields, tensors, spans=spans, tensor_info_span=ti_span)


def _mapped(path: str | Path) -> tuple[Path, mmap.mmap]:
    """The whole file memory-mapped, after one clear error for what is not a GGUF file."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, not a GGUF file; pass the .gguf file itself")
    if not is_gguf(path):  # raises a clear error for an unreadable file
        if not path.exists():
            raise ModelFormatError(f"{path}: no such file")
        size = path.stat().st_size
        if size < len(GGUF_MAGIC):
            raise ModelFormatError(f"{path}: not a GGUF file (it is {size} bytes long)")
        raise ModelFormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        with open(path, "rb") as file:  # the map outlives the file object
            return path, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise access_error(path, exc) from None


def _reading(path: Path, parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except _Truncated:
        raise ModelFormatError(
            f"{path}: the GGUF header ends early; the file is truncated, download it again"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # unknown value or tensor type codes
        raise ModelFormatError(f"{path}: not a readable GGUF file ({exc}); it may be damaged") from None


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file; any damage is one `ModelFormatError` naming the file."""
    path, buf = _mapped(path)
    return _reading(path, lambda: _parse(path, buf))


def read_metadata(path: str | Path, *, prefix: str | tuple[str, ...] = "") -> dict[str, Any]:
    """The values of the metadata keys that start with `prefix` (a string or a tuple of them);
    other values are stepped over undecoded and tensor infos are not read. Same parser and errors
    as `open_gguf`."""
    path, buf = _mapped(path)
    try:
        _, fields, _ = _reading(path, lambda: _metadata(path, _Cursor(buf), prefix))
    finally:
        with contextlib.suppress(BufferError):  # values are copies; a traceback may hold a view
            buf.close()
    return {key: field.value for key, field in fields.items()}


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
