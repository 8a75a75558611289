"""`gemma-mtp sanitize`: remove metadata that leaks the build host (llama-quantize writes the
absolute paths of its imatrix file and dataset into every quantized file; FACTS.md).

The rewrite is byte surgery on the header: the kept key/value records and the tensor infos are
copied verbatim, only the key count changes, and the whole data section (tensor offsets are
relative to it) is copied unchanged. Only files gemma-mtp handles are touched (the Gemma targets and
the three drafter layouts): anything else is refused by name unless `any_arch` says otherwise.

Importance-matrix files (`general.type = "imatrix"`, no architecture; llama-imatrix writes the path
of its calibration text into `imatrix.datasets`, and llama-quantize copies it into every file it
quantizes) keep their datasets by base name: the entry is rewritten, the key and the tensors stay.
"""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from gguf import GGUFValueType

from ..errors import ModelFormatError, UsageError
from ..gguf import imatrix as imx
from ..gguf.atomic import atomic_write, check_output_dir
from ..gguf.keys import LAYOUT_BY_ARCH, TARGET_ARCHS
from ..gguf.metadata import describe_supported
from ..gguf.reader import GGUFFile, open_gguf, read_metadata
from .paths import gguf_input

__all__ = [
    "Leak",
    "SanitizeResult",
    "find_leaks",
    "is_host_path",
    "sanitize_gguf",
    "check_architecture",
    "IMATRIX_KEYS",
    "dataset_name",
]

# Keys llama-quantize fills with paths on the build host (removed whatever they hold).
IMATRIX_KEYS = {
    "quantize.imatrix.file": "llama-quantize's importance-matrix file, a path on the build host",
    "quantize.imatrix.dataset": "llama-quantize's calibration dataset, a path on the build host",
}
# What an importance-matrix file holds (gguf/imatrix.py writes exactly these, as llama-imatrix does).
IMATRIX_FILE_KEYS = frozenset({imx.KEY_TYPE, *imx.IMATRIX_KEYS, "general.alignment"})
# Token tables hold arbitrary text ("/usr" can be a token): they are never scanned.
UNSCANNED_PREFIXES = ("tokenizer.ggml.",)
_WHOLE_PATH = re.compile(
    r"""^(?:
        /(?!/)[^\n]+                       # POSIX absolute path
      | [A-Za-z]:[\\/][^\n]*               # Windows drive path
      | \\\\[^\\\n]+\\[^\n]*               # Windows UNC path
      | file://[^\n]+                      # file URI
    )$""",
    re.VERBOSE,
)
# A home or mount directory inside a longer one-line value ("imatrix from /home/me/x.dat").
_EMBEDDED_PATH = re.compile(
    r"(?:^|[\s'\"=:(,])(?:/(?:home|Users|root|mnt|media|tmp|data|scratch|workspace)/|[A-Za-z]:\\Users\\)"
)


@dataclass(frozen=True)
class Leak:
    key: str
    value: str  # the offending string (the first one, for arrays)
    why: str


@dataclass(frozen=True)
class SanitizeResult:
    path: Path | None  # None: nothing written (--check, or --in-place on a clean file)
    removed: list[Leak]
    kv_count_before: int
    kv_count_after: int


def is_host_path(value: str) -> bool:
    """True for a one-line string that is, or names, an absolute path on some machine."""
    if "\n" in value or len(value) > 4096:
        return False  # chat templates and other prose
    return bool(_WHOLE_PATH.match(value.strip()) or _EMBEDDED_PATH.search(value))


def find_leaks(gf: GGUFFile) -> list[Leak]:
    leaks = []
    for key, f in gf.fields.items():
        if key in IMATRIX_KEYS:
            leaks.append(Leak(key, str(f.value), IMATRIX_KEYS[key]))
        elif key.startswith(UNSCANNED_PREFIXES):
            continue
        elif f.type == GGUFValueType.STRING and is_host_path(f.value):
            leaks.append(Leak(key, f.value, "an absolute path on the build host"))
        elif f.sub_type == GGUFValueType.STRING:
            found = next((v for v in f.value if is_host_path(v)), None)
            if found is not None:
                leaks.append(Leak(key, found, "holds an absolute path on the build host"))
    return leaks


# ------------------------------------------------------------------------------------- rewrite


def _rewrite(gf: GGUFFile, out: Path, drop: set[str]) -> None:
    """The header with the records in `drop` left out (the reader's byte spans, copied verbatim),
    padded to the alignment, then the data section unchanged."""
    ti_start, ti_end = gf.tensor_info_span
    align = gf.alignment
    data_start = -(-ti_end // align) * align
    with open(gf.path, "rb") as fin:
        head = fin.read(ti_end)
        kept = [(start, end) for key, (start, end) in gf.spans.items() if key not in drop]
        parts = [head[0:16], struct.pack("<Q", len(kept))]
        parts += [head[start:end] for start, end in kept]
        parts.append(head[ti_start:ti_end])
        header = b"".join(parts)
        with open(out, "wb") as fout:
            fout.write(header)
            fout.write(b"\0" * (-len(header) % align))
            fin.seek(data_start)
            shutil.copyfileobj(fin, fout, length=16 << 20)


def check_architecture(gf: GGUFFile) -> None:
    """Refuse a GGUF whose `general.architecture` is not one gemma-mtp handles."""
    if gf.arch not in TARGET_ARCHS and gf.arch not in LAYOUT_BY_ARCH:
        raise ModelFormatError(
            f"{gf.path}: general.architecture {gf.arch!r} is not a model gemma-mtp handles "
            f"({describe_supported()}); nothing written. Pass --any-arch to sanitize it anyway"
        )


def dataset_name(value: str) -> str:
    """A dataset entry without its folders: the base name of a POSIX or Windows path (a file URI
    too); anything without a separator (a plain name, `gemma-mtp:bench-prompts`) as it is."""
    text = value.strip().removeprefix("file://")
    if "\\" in text:
        return PureWindowsPath(text).name or text
    return PurePosixPath(text).name if "/" in text else value


def _is_imatrix(path: Path) -> bool:
    meta = read_metadata(path, prefix="general.")
    return meta.get(imx.KEY_TYPE) == "imatrix" and "general.architecture" not in meta


def _sanitize_imatrix(src: Path, out: Path | None, *, check: bool, in_place: bool) -> SanitizeResult:
    """`imatrix.datasets` entries with folders -> their base names (the file rewritten by
    `gguf.imatrix.write_imatrix`, atomically); the other keys and every value are kept."""
    keys = set(read_metadata(src))
    unknown = sorted(keys - IMATRIX_FILE_KEYS)
    if unknown:
        raise ModelFormatError(
            f"{src}: an imatrix file with key {unknown[0]}, which llama-imatrix does not write; "
            "nothing written (sanitize rewrites only the imatrix files llama-imatrix and gemma-mtp write)"
        )
    data = imx.read_imatrix(src)
    names = [dataset_name(d) for d in data.datasets]
    changed = [(d, n) for d, n in zip(data.datasets, names, strict=True) if d != n]
    leaks = (
        [
            Leak(
                imx.KEY_DATASETS,
                changed[0][0],
                f"the calibration text's path on the build host; kept as {', '.join(repr(n) for _, n in changed)}",
            )
        ]
        if changed
        else []
    )
    n_kv = len(keys)
    if check or (in_place and not leaks):
        return SanitizeResult(None, leaks, n_kv, n_kv)
    imx.write_imatrix(out, replace(data, datasets=names))
    return SanitizeResult(out, leaks, n_kv, len(read_metadata(out)))


def sanitize_gguf(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    in_place: bool = False,
    check: bool = False,
    any_arch: bool = False,
) -> SanitizeResult:
    """Remove every leak (`find_leaks`) from `src` into `dst`, or into `src` itself with `in_place`;
    `check` only reports. Writes through a temp file and a rename. A file of an architecture
    gemma-mtp does not handle is refused unless `any_arch` (the surgery itself is format-generic)."""
    src = gguf_input(src, "sanitize")
    if not check and (dst is None) == (not in_place):
        raise UsageError("sanitize needs OUT or --in-place (one of them)")
    if not check and not in_place:
        check_output_dir(dst)
    out = src if in_place else Path(dst) if dst is not None else None
    if out is not None and not in_place and out.exists() and out.resolve() == src.resolve():
        raise UsageError(f"OUT is the input file {src}; use --in-place to rewrite it")
    if _is_imatrix(src):
        return _sanitize_imatrix(src, out, check=check, in_place=in_place)
    gf = open_gguf(src)
    if not any_arch:
        check_architecture(gf)
    leaks = find_leaks(gf)
    n_kv = len(gf.fields)
    after = n_kv - len(leaks)
    if check or (in_place and not leaks):
        return SanitizeResult(None, leaks, n_kv, after if not check else n_kv)
    with atomic_write(out) as tmp:
        _rewrite(gf, tmp, {leak.key for leak in leaks})
        written = open_gguf(tmp)
        if len(written.fields) != after:
            raise ModelFormatError(f"{src}: sanitizing left {len(written.fields)} keys, expected {after}")
    return SanitizeResult(out, leaks, n_kv, after)
