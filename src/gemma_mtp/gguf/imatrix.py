"""Importance-matrix files as llama.cpp reads and writes them.

Two formats are in circulation:
- GGUF (llama-imatrix's default since 2025, `save_imatrix` in tools/imatrix/imatrix.cpp):
  `general.type = "imatrix"`, `imatrix.datasets` (strings), `imatrix.chunk_count` and
  `imatrix.chunk_size` (u32), and per tensor `<name>.in_sum2` (F32, ggml shape [n_per_row, n_mat]:
  the raw sums of squared activations) and `<name>.counts` (F32, [1, n_mat]: rows seen per matrix;
  n_mat is the expert count of a MoE tensor, else 1), names sorted. No `general.architecture`.
- legacy `.dat` (`save_imatrix_legacy`): i32 n_entries; per entry i32 name length, name, i32 ncall,
  i32 nval, nval f32 (already averaged: sum / count * ncall); then optionally i32 chunk count,
  i32 dataset length, dataset.

`ImatrixData.importance` is what llama-quantize hands the quantizer (`load_imatrix` in
tools/quantize/quantize.cpp): sums / counts per matrix, 1.0 where a matrix saw no rows (GGUF), and
sums / ncall for legacy files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGMLQuantizationType, GGUFValueType

from ..errors import ModelFormatError
from .atomic import atomic_write
from .formats import access_error

__all__ = ["ImatrixData", "read_imatrix", "write_imatrix", "IMATRIX_KEYS", "SUM_SUFFIX", "COUNT_SUFFIX"]

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
IMATRIX_KEYS = (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE)
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"
_MAKE_ONE = "make a new one with llama-imatrix or gemma-mtp imatrix"


@dataclass
class ImatrixData:
    """Per tensor name: (in_sum2 float32 [n_mat, n_per_row], counts float32 [n_mat]).

    For a legacy `.dat` file (`legacy=True`) in_sum2 is the file's averaged values as one row
    [1, nval] (the format does not record n_mat) and counts is [ncall]."""

    entries: dict[str, tuple[np.ndarray, np.ndarray]]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def importance(self, name: str) -> np.ndarray | None:
        """llama-quantize's weights for tensor `name`: float32 [n_mat, n_per_row], or None."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        sums, counts = entry
        sums = np.asarray(sums, dtype=np.float32)
        counts = np.asarray(counts, dtype=np.float32).reshape(-1, 1)
        if self.legacy:
            ncall = np.float32(_lround(counts[0, 0]))  # read back as an int32
            return sums / ncall if ncall > 0 else sums.copy()
        counts = _lround(counts)  # the loader keeps counts as int64 (std::lround)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = sums / counts
        return np.where(counts > 0, values, np.float32(1.0)).astype(np.float32)


def _lround(x: np.ndarray) -> np.ndarray:
    """C's lround (halves away from zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return (np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))).astype(np.float32)


# ------------------------------------------------------------------------------------- writing


def _pad(n: int) -> int:
    return -(-n // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _ggml_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """ggml order, trailing 1s dropped as ggml_n_dims does (at least one dim)."""
    dims = list(shape)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _tensors(data: ImatrixData) -> list[tuple[str, tuple[int, ...], bytes]]:
    out = []
    for name in sorted(data.entries):
        sums, counts = data.entries[name]
        counts = np.asarray(counts, dtype=np.float32).reshape(-1)
        n_mat = counts.size
        sums = np.asarray(sums, dtype=np.float32)
        if n_mat == 0 or sums.size == 0:
            continue  # save_imatrix skips entries without values
        if sums.size % n_mat:
            raise ValueError(f"imatrix entry {name}: {sums.size} sums do not split into {n_mat} matrices")
        n_per_row = sums.size // n_mat
        out.append((name + SUM_SUFFIX, _ggml_dims((n_per_row, n_mat)), sums.astype("<f4").tobytes()))
        out.append((name + COUNT_SUFFIX, _ggml_dims((1, n_mat)), counts.astype("<f4").tobytes()))
    return out


def _header(data: ImatrixData, tensors: list[tuple[str, tuple[int, ...], bytes]]) -> bytes:
    kv = [
        _string(KEY_TYPE) + struct.pack("<I", GGUFValueType.STRING) + _string("imatrix"),
        _string(KEY_DATASETS)
        + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, len(data.datasets))
        + b"".join(_string(d) for d in data.datasets),
        _string(KEY_CHUNK_COUNT) + struct.pack("<II", GGUFValueType.UINT32, int(data.chunk_count)),
        _string(KEY_CHUNK_SIZE) + struct.pack("<II", GGUFValueType.UINT32, int(data.chunk_size)),
    ]
    infos, offset = [], 0
    for name, dims, raw in tensors:
        info = _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos.append(info + struct.pack("<IQ", GGMLQuantizationType.F32, offset))
        offset += _pad(len(raw))
    head = struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(tensors), len(kv)) + b"".join(kv + infos)
    return head + b"\0" * (_pad(len(head)) - len(head))


def write_imatrix(path: str | Path, data: ImatrixData) -> None:
    """Write `data` as llama-imatrix's GGUF file (byte for byte the layout `gguf_write_to_file`
    gives), through `atomic_write`. Written by hand rather than with `gguf.GGUFWriter`, which
    always adds `general.architecture` and cannot write an empty `imatrix.datasets`."""
    tensors = _tensors(data)
    with atomic_write(path) as tmp, open(tmp, "wb") as out:
        out.write(_header(data, tensors))
        for _, _, raw in tensors:
            out.write(raw + b"\0" * (_pad(len(raw)) - len(raw)))


# ------------------------------------------------------------------------------------- reading


def _bad(path: Path, what: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: {what}")


def read_imatrix(path: str | Path) -> ImatrixData:
    """Read a GGUF or legacy `.dat` importance matrix; damage is one `ModelFormatError` naming the
    file, the entry at fault and what to do."""
    path = Path(path)
    if path.is_dir():
        raise _bad(path, "is a directory, not an imatrix file; pass the .gguf or .dat file itself")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _bad(path, "no such imatrix file") from None
    except OSError as exc:
        raise access_error(path, exc) from None
    if raw[:4] == struct.pack("<I", GGUF_MAGIC):
        return _read_gguf(path, raw)
    return _read_legacy(path, raw)


class _Bytes:
    """A cursor over the file's bytes that raises `_Short` at the end."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _Short
        start, self.pos = self.pos, self.pos + n
        return self.raw[start : self.pos]

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def i32(self) -> int:
        return self.unpack("<i")[0]

    def u64(self) -> int:
        return self.unpack("<Q")[0]

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", "replace")


class _Short(Exception):
    pass


_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip


def _value(cur: _Bytes, vtype: int):
    if vtype == GGUFValueType.STRING:
        return cur.string()
    if vtype == GGUFValueType.ARRAY:
        sub, count = cur.unpack("<IQ")
        if sub == GGUFValueType.ARRAY:
            raise ValueError("nested metadata arrays")
        return [_value(cur, sub) for _ in range(count)]
    return cur.unpack(_SCALAR[GGUFValueType(vtype)])[0]


def _gguf_parts(path: Path, raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, F32 tensors in numpy order) of a GGUF file."""
    cur = _Bytes(raw)
    try:
        _, version, n_tensors, n_kv = cur.unpack("<IIQQ")
        if version not in (2, 3):
            raise _bad(path, f"GGUF version {version} is not supported (2 and 3 are); {_MAKE_ONE}")
        meta = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = _value(cur, cur.unpack("<I")[0])
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.unpack("<I")
            dims = cur.unpack(f"<{n_dims}Q")
            qtype, offset = cur.unpack("<IQ")
            infos.append((name, dims, qtype, offset))
    except _Short:
        raise _bad(path, f"the GGUF header ends early; the file is truncated, {_MAKE_ONE}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not a readable GGUF file ({exc}); it may be damaged, {_MAKE_ONE}") from None
    align = int(meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    start = -(-cur.pos // align) * align
    tensors = {}
    for name, dims, qtype, offset in infos:
        if qtype != GGMLQuantizationType.F32:
            if name.endswith((SUM_SUFFIX, COUNT_SUFFIX)):
                type_name = GGMLQuantizationType(qtype).name if qtype in GGMLQuantizationType else qtype
                raise _bad(path, f"tensor {name} is {type_name}; imatrix sums and counts must be F32")
            continue
        n = int(np.prod(dims, dtype=np.int64))
        begin, end = start + offset, start + offset + 4 * n
        if end > len(raw):
            raise _bad(
                path,
                f"tensor {name} ends at byte {end} but the file has {len(raw)} bytes; "
                f"the file is truncated, {_MAKE_ONE}",
            )
        tensors[name] = np.frombuffer(raw, dtype="<f4", count=n, offset=begin).reshape(tuple(reversed(dims)))
    return meta, tensors


def _read_gguf(path: Path, raw: bytes) -> ImatrixData:
    meta, tensors = _gguf_parts(path, raw)
    missing = [k for k in IMATRIX_KEYS if k not in meta]
    if missing:
        arch = meta.get("general.architecture")
        what = f"a model file ({arch}), not an importance matrix" if arch else "not an importance matrix"
        raise _bad(path, f"no {', '.join(missing)} metadata: this is {what}; {_MAKE_ONE}")
    names = sorted(
        {n.removesuffix(SUM_SUFFIX) for n in tensors if n.endswith(SUM_SUFFIX)}
        | {n.removesuffix(COUNT_SUFFIX) for n in tensors if n.endswith(COUNT_SUFFIX)}
    )
    if not names:
        raise _bad(path, f"no importance data (no *.in_sum2 / *.counts tensors); {_MAKE_ONE}")
    entries = {}
    for name in names:
        sums, counts = tensors.get(name + SUM_SUFFIX), tensors.get(name + COUNT_SUFFIX)
        if sums is None or counts is None:
            have, lack = (SUM_SUFFIX, COUNT_SUFFIX) if counts is None else (COUNT_SUFFIX, SUM_SUFFIX)
            raise _bad(
                path, f"entry {name} has {name}{have} but no {name}{lack}; the file is damaged, {_MAKE_ONE}"
            )
        counts = counts.reshape(-1)
        if counts.size == 0 or sums.size % counts.size:
            raise _bad(
                path,
                f"entry {name}: {sums.size} sums do not split into {counts.size} matrices "
                f"(the counts); the file is damaged, {_MAKE_ONE}",
            )
        entries[name] = (sums.reshape(counts.size, -1).copy(), counts.copy())
    datasets = meta[KEY_DATASETS]
    return ImatrixData(
        entries=entries,
        datasets=[str(d) for d in datasets] if isinstance(datasets, list) else [str(datasets)],
        chunk_count=int(meta[KEY_CHUNK_COUNT]),
        chunk_size=int(meta[KEY_CHUNK_SIZE]),
    )


def _read_legacy(path: Path, raw: bytes) -> ImatrixData:
    cur = _Bytes(raw)
    what = "the entry count"
    try:
        n_entries = cur.i32()
        if n_entries < 1 or n_entries > len(raw) // 12:
            raise _bad(
                path,
                f"neither a GGUF nor a legacy .dat imatrix (it would hold {n_entries} entries); "
                f"pass the file llama-imatrix wrote, or {_MAKE_ONE}",
            )
        entries = {}
        for i in range(n_entries):
            what = f"the name of entry {i + 1} of {n_entries}"
            length = cur.i32()
            name = cur.take(length).decode("utf-8", "replace")
            what = f"entry {i + 1} of {n_entries} ({name})"
            ncall, nval = cur.i32(), cur.i32()
            if nval < 1:
                raise _bad(path, f"{what} has {nval} values; the file is damaged, {_MAKE_ONE}")
            sums = np.frombuffer(cur.take(4 * nval), dtype="<f4").reshape(1, nval).copy()
            entries[name] = (sums, np.array([ncall], dtype=np.float32))
        chunk_count, datasets = 0, []
        if cur.pos < len(raw):  # the trailer (chunk count, dataset) is optional
            what = "the chunk count after the entries"
            chunk_count = cur.i32()
            if cur.pos < len(raw):
                what = "the dataset name after the entries"
                length = cur.i32()
                if length > 0:
                    datasets.append(cur.take(length).decode("utf-8", "replace"))
    except _Short:
        raise _bad(
            path, f"legacy imatrix ends early, in {what}; the file is truncated, {_MAKE_ONE}"
        ) from None
    return ImatrixData(entries=entries, datasets=datasets, chunk_count=chunk_count, legacy=True)
