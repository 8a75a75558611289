"""`gemma-mtp quantize`: a GGUF file -> the same model with its matrices in another type, with the
per-tensor mixes llama-quantize makes (`llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp).

What llama-quantize does, and so what we do (for the file types below):
- Only tensors named `*weight` with 2+ dims are quantized; norms, `ffn_gate_inp`,
  `per_layer_model_proj` and a few tiny tensors keep their type.
- F32/F16/BF16 files: every such tensor takes that type. Quantized file types start from a base
  type; the output head (or the token embedding when it is tied, `per_layer_token_embd` included)
  becomes Q6_K (Q8_0 when its rows do not fit 256-blocks); the mixes raise `attn_v`,
  `ffn_down` and `attn_output` on the layers their rules pick (`FileType`).
- Rows that do not fit a type's blocks fall back: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1,
  Q6_K -> Q8_0, then F16.
- With `--imatrix FILE` (llama-imatrix's GGUF or legacy .dat) every tensor with an entry is encoded
  with its importance (`ggml_quantize_chunk`'s quant_weights; one vector per expert of a 3-D
  tensor), and Q4_0/Q5_0 files take Q4_1/Q5_1 for the first eighth of `ffn_down` as llama-quantize
  does then. A tensor without an entry is encoded without (llama-quantize's "did not find
  weights"), listed in the result; an entry of the wrong size is an error (except for the token
  embedding, which is then encoded without). IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS and Q2_K_S need one:
  llama-quantize refuses them without it, and so do we.
- `general.file_type` and `general.quantization_version` are set, and with an imatrix
  `quantize.imatrix.entries_count` / `chunks_count`; unlike llama-quantize we write no
  `quantize.imatrix.file` / `dataset` (host paths: see `gemma-mtp sanitize`).
Tensors already in the target type are copied byte for byte; others are dequantized and encoded
by `codecs.encode` (bit-exact with ggml's quantizers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from ..errors import ModelFormatError, UsageError
from ..gguf.codecs import encode
from ..gguf.imatrix import ImatrixData, read_imatrix
from ..gguf.keys import LAYOUT_BY_ARCH, K
from ..gguf.reader import FLOAT_TYPES, INT_TYPES, GGUFFile, TensorInfo, open_gguf, tensor_values
from ..gguf.writer import QUANTIZATION_VERSION, Entry, LazyTensor, write_gguf_lazy
from ..quant.policy import DRAFTER_ADVICE, DRAFTER_LOW_BIT_TYPES
from .paths import check_output, gguf_input
from .sanitize import find_leaks

__all__ = [
    "FILE_TYPES",
    "IMATRIX_REQUIRED",
    "LOW_BIT_TYPES",
    "FileType",
    "TensorSpec",
    "QuantizeResult",
    "plan_types",
    "quantize_gguf",
    "resolve_file_type",
]

T = GGMLQuantizationType


@dataclass(frozen=True, kw_only=True)
class FileType:
    """One `TYPE` of the quantize command: its base tensor type and the mix rules on top.

    A rule is (which layers, raised type, type for the other layers or None for the base); the
    layer tests are `_layer_rule`'s."""

    name: str
    file_type: LlamaFileType
    base: GGMLQuantizationType
    attn_v: tuple[str, GGMLQuantizationType, GGMLQuantizationType | None] | None = None
    ffn_down: tuple[str, GGMLQuantizationType, GGMLQuantizationType | None] | None = None
    ffn_down_imatrix: GGMLQuantizationType | None = None  # first eighth, only with an imatrix
    attn_output: GGMLQuantizationType | None = None  # models without 8 experts
    attn_output_8x: bool = False  # Q5_K for attn_output on 8-expert models
    requires_imatrix: bool = False


_FT = LlamaFileType
_V6 = ("more_bits", T.Q6_K, None)
FILE_TYPES = {
    ft.name: ft
    for ft in (
        FileType(name="F32", file_type=_FT.ALL_F32, base=T.F32),
        FileType(name="F16", file_type=_FT.MOSTLY_F16, base=T.F16),
        FileType(name="BF16", file_type=_FT.MOSTLY_BF16, base=T.BF16),
        FileType(name="Q8_0", file_type=_FT.MOSTLY_Q8_0, base=T.Q8_0),
        FileType(name="Q6_K", file_type=_FT.MOSTLY_Q6_K, base=T.Q6_K),
        FileType(name="Q5_1", file_type=_FT.MOSTLY_Q5_1, base=T.Q5_1),
        FileType(name="Q5_0", file_type=_FT.MOSTLY_Q5_0, base=T.Q5_0, ffn_down_imatrix=T.Q5_1),
        FileType(name="Q5_K_M", file_type=_FT.MOSTLY_Q5_K_M, base=T.Q5_K, attn_v=_V6, ffn_down=_V6),
        FileType(name="Q5_K_S", file_type=_FT.MOSTLY_Q5_K_S, base=T.Q5_K),
        FileType(
            name="Q4_K_M",
            file_type=_FT.MOSTLY_Q4_K_M,
            base=T.Q4_K,
            attn_v=_V6,
            ffn_down=_V6,
            attn_output_8x=True,
        ),
        FileType(
            name="Q4_K_S",
            file_type=_FT.MOSTLY_Q4_K_S,
            base=T.Q4_K,
            attn_v=("first_4", T.Q5_K, None),
            ffn_down=("first_eighth", T.Q5_K, None),
            attn_output_8x=True,
        ),
        FileType(name="Q4_1", file_type=_FT.MOSTLY_Q4_1, base=T.Q4_1),
        FileType(name="Q4_0", file_type=_FT.MOSTLY_Q4_0, base=T.Q4_0, ffn_down_imatrix=T.Q4_1),
        FileType(
            name="Q3_K_L",
            file_type=_FT.MOSTLY_Q3_K_L,
            base=T.Q3_K,
            attn_v=("all", T.Q5_K, None),
            ffn_down=("all", T.Q5_K, None),
            attn_output=T.Q5_K,
        ),
        FileType(
            name="Q3_K_M",
            file_type=_FT.MOSTLY_Q3_K_M,
            base=T.Q3_K,
            attn_v=("first_2", T.Q5_K, T.Q4_K),
            ffn_down=("first_sixteenth", T.Q5_K, T.Q4_K),
            attn_output=T.Q4_K,
            attn_output_8x=True,
        ),
        FileType(name="Q3_K_S", file_type=_FT.MOSTLY_Q3_K_S, base=T.Q3_K, attn_output_8x=True),
        FileType(
            name="Q2_K",
            file_type=_FT.MOSTLY_Q2_K,
            base=T.Q2_K,
            attn_v=("gqa4", T.Q4_K, T.Q3_K),
            ffn_down=("all", T.Q3_K, None),
            attn_output=T.Q3_K,
            attn_output_8x=True,
        ),
        FileType(
            name="Q2_K_S",
            file_type=_FT.MOSTLY_Q2_K_S,
            base=T.Q2_K,
            attn_v=("gqa4", T.Q4_K, None),
            ffn_down=("first_eighth", T.Q4_K, None),
            requires_imatrix=True,
        ),
    )
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's
# llama-quantize's file types that it refuses without an imatrix (their IQ1/IQ2/IQ3_XXS tensors,
# or Q2_K_S's Q2_K ones, are `tensor_requires_imatrix` in llama-quant.cpp)
IMATRIX_REQUIRED = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
# llama-quantize's file types whose tensor types we can read but not write
UNWRITABLE = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S",
              "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE", "Q1_0", "Q2_0")  # fmt: skip
IMATRIX_WHY = (
    "without an importance matrix the very low-bit codes lose what the matrix would protect, and "
    "the file is worse than a K-quant of its size under a label that promises better"
)
LOW_BIT_TYPES = DRAFTER_LOW_BIT_TYPES
# Fallback of a 256-block type whose rows do not fit (llama.cpp's tensor_type_fallback).
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
# Quantizable tensors are `*weight`, 2+ dims, and none of these (llama.cpp's tensor_allows_quantization).
KEEP_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj")
TOKEN_EMBEDDINGS = ("token_embd.weight", "per_layer_token_embd.weight")
OUTPUT = "output.weight"
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
IMATRIX_PREFIX = "quantize.imatrix."
_LAYER = re.compile(r"blk\.(\d+)\.")


def resolve_file_type(
    name: str, *, drafter: bool, allow_low_bit_drafter: bool = False, has_imatrix: bool = False
) -> FileType:
    """The `TYPE` argument -> its FileType. A low-bit type for a drafter is refused with the reason;
    `--allow-low-bit-drafter` is suggested only where it would help (a type gemma-mtp makes). The
    types llama-quantize refuses without an importance matrix are refused without one, saying why."""
    key = ALIASES.get(name.upper(), name.upper())
    supported = f"gemma-mtp quantizes to {', '.join(FILE_TYPES)}"
    low_bit_drafter = key in LOW_BIT_TYPES and drafter
    drafter_advice = f"; for an MTP drafter, {DRAFTER_ADVICE}" if low_bit_drafter else ""
    needs = (
        f"; {key} also needs an importance matrix (--imatrix FILE, from llama-imatrix): {IMATRIX_WHY}"
        if key in IMATRIX_REQUIRED and not has_imatrix
        else ""
    )
    if key in UNWRITABLE:
        raise UsageError(
            f"quantize type {name!r} is not supported: gemma-mtp reads {key} files but has no encoder "
            f"for its tensor types; make it with llama.cpp's llama-quantize "
            f"(llama-quantize --imatrix FILE IN OUT {key}){needs}{drafter_advice}"
        )
    if key not in FILE_TYPES:
        advice = drafter_advice
        if low_bit_drafter and allow_low_bit_drafter:
            advice += " (--allow-low-bit-drafter lifts only the drafter policy; it adds no types)"
        raise UsageError(f"quantize type {name!r} is not supported: {supported}{advice}")
    if needs:
        raise UsageError(
            f"quantize type {key} needs an importance matrix: pass --imatrix FILE; {IMATRIX_WHY}"
        )
    if low_bit_drafter and not allow_low_bit_drafter:
        raise UsageError(
            f"refusing to quantize an MTP drafter to {key}: {DRAFTER_ADVICE}, "
            "or pass --allow-low-bit-drafter to make it anyway"
        )
    return FILE_TYPES[key]


# ------------------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (the row length) first
    tensor_type: GGMLQuantizationType


def _allows_quantization(t: TensorSpec) -> bool:
    n_dims = len(t.shape)
    while n_dims > 1 and t.shape[n_dims - 1] == 1:  # ggml_n_dims ignores trailing 1s
        n_dims -= 1
    return (
        n_dims >= 2
        and t.name.endswith("weight")
        and not any(s in t.name for s in KEEP_SUBSTRINGS)
        and t.tensor_type not in INT_TYPES
    )


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_rule(rule: str, i_layer: int, n_layers: int, n_gqa: int = 0) -> bool:
    return {
        "more_bits": lambda: _use_more_bits(i_layer, n_layers),
        "first_2": lambda: i_layer < 2,
        "first_4": lambda: i_layer < 4,
        "first_eighth": lambda: i_layer < n_layers // 8,
        "first_sixteenth": lambda: i_layer < n_layers // 16,
        "all": lambda: True,
        "gqa4": lambda: n_gqa >= 4,  # grouped-query attention, 4+ query heads per KV head
    }[rule]()


def _apply(rule, new: GGMLQuantizationType, hit: bool) -> GGMLQuantizationType:
    if rule is None:
        return new
    return rule[1] if hit else (rule[2] or new)


def _is_attn_v(name: str) -> bool:
    """llama.cpp's category_is_attn_v: V, fused QKV and MLA's kv_b share the attn_v rules."""
    return any(k in name for k in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"))


def _llama_order(t: TensorSpec) -> tuple[int, str]:
    """llama.cpp's weights_map order: by layer (non-layer tensors first), then by name."""
    match = _LAYER.match(t.name)
    return (int(match.group(1)) if match else -1, t.name)


@dataclass
class _Counters:
    n_attn_v: int
    n_layers: int
    n_expert: int
    n_gqa: int = 0
    has_imatrix: bool = False
    i_attn_v: int = 0
    i_ffn_down: int = 0

    def layer_of(self, name: str) -> int:
        # MoE files interleave experts, so llama.cpp reads the layer from the name there
        match = _LAYER.match(name)
        return int(match.group(1)) if self.n_expert > 1 and match else self.i_ffn_down


def _mixed_type(t: TensorSpec, ft: FileType, tied: bool, c: _Counters) -> GGMLQuantizationType:
    new = ft.base
    name, row = t.name, t.shape[0]
    if name == OUTPUT or (tied and name in TOKEN_EMBEDDINGS):
        if row % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if name in TOKEN_EMBEDDINGS:
        return new
    if _is_attn_v(name):
        rule = ft.attn_v
        if rule is not None:
            new = _apply(rule, new, _layer_rule(rule[0], c.i_attn_v, c.n_attn_v, c.n_gqa))
        if c.n_expert == 8:
            new = T.Q8_0
        c.i_attn_v += 1
        return new
    if "attn_k.weight" in name and c.n_expert == 8:
        return T.Q8_0
    if "ffn_down" in name:
        i_layer = c.layer_of(name)
        rule = ft.ffn_down
        if rule is not None:
            new = _apply(rule, new, _layer_rule(rule[0], i_layer, c.n_layers, c.n_gqa))
        elif ft.ffn_down_imatrix and c.has_imatrix and i_layer < c.n_layers // 8:
            new = ft.ffn_down_imatrix  # llama.cpp's guard for Q4_0/Q5_0's first ffn_down layers
        c.i_ffn_down += 1
        return new
    if "attn_output.weight" in name:
        if c.n_expert == 8:
            return T.Q5_K if ft.attn_output_8x else new
        return ft.attn_output or new
    return new


def _fallback(qtype: GGMLQuantizationType, row: int) -> tuple[GGMLQuantizationType, bool]:
    if row % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype, False
    qtype = FALLBACK.get(qtype, qtype)
    return (qtype if row % GGML_QUANT_SIZES[qtype][0] == 0 else T.F16), True


def plan_types(
    tensors: Sequence[TensorSpec],
    ft: FileType,
    *,
    n_layers: int,
    n_expert: int = 0,
    n_gqa: int = 0,
    has_imatrix: bool = False,
) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    """(target type per tensor, names of the tensors that needed a fallback type). `n_gqa`: query
    heads per KV head of layer 0 (llama.cpp's hparams.n_gqa()), read by the Q2_K mixes."""
    c = _Counters(
        n_attn_v=sum(_is_attn_v(t.name) for t in tensors),
        n_layers=n_layers,
        n_expert=n_expert,
        n_gqa=n_gqa,
        has_imatrix=has_imatrix,
    )
    tied = not any(t.name == OUTPUT for t in tensors)
    quantized_base = ft.base not in FLOAT_TYPES
    plan, fallbacks = {}, []
    for t in sorted(tensors, key=_llama_order):
        if not _allows_quantization(t):
            plan[t.name] = t.tensor_type
        elif not quantized_base:
            plan[t.name] = ft.base
        else:
            plan[t.name], fell_back = _fallback(_mixed_type(t, ft, tied, c), t.shape[0])
            if fell_back:
                fallbacks.append(t.name)
    return {t.name: plan[t.name] for t in tensors}, fallbacks


# ------------------------------------------------------------------------------------- the file


@dataclass
class QuantizeResult:
    path: Path
    file_type: FileType
    types: dict[str, GGMLQuantizationType]
    fallbacks: list[str]
    removed_keys: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    bytes_in: int = 0
    bytes_out: int = 0
    imatrix_entries: int = 0  # entries of --imatrix (0: none given)
    without_imatrix: list[str] = field(default_factory=list)  # quantized tensors it has no entry for


def _entries(
    gf: GGUFFile, ft: FileType, imatrix: ImatrixData | None
) -> tuple[list[Entry], list[tuple[str, str]]]:
    leaks = {leak.key: leak.why for leak in find_leaks(gf)}
    entries, removed = [], []
    for key, f in gf.fields.items():
        if key in leaks:
            removed.append((key, leaks[key]))
        elif key.startswith(IMATRIX_PREFIX):
            removed.append((key, "describes an importance matrix the new file is not made with"))
        elif key not in SPLIT_KEYS and key not in (K.FILE_TYPE, K.QUANTIZATION_VERSION):
            entries.append(Entry(key, f.value, f.type, f.sub_type))
    entries.append(Entry(K.QUANTIZATION_VERSION, QUANTIZATION_VERSION, GGUFValueType.UINT32))
    entries.append(Entry(K.FILE_TYPE, int(ft.file_type), GGUFValueType.UINT32))
    if imatrix is not None:  # llama-quantize's counts; its file and dataset keys are host paths
        entries.append(Entry(IMATRIX_PREFIX + "entries_count", len(imatrix.entries), GGUFValueType.UINT32))
        if imatrix.chunk_count > 0:
            entries.append(Entry(IMATRIX_PREFIX + "chunks_count", imatrix.chunk_count, GGUFValueType.UINT32))
    return entries, removed


def _importance(path: Path, imatrix: ImatrixData, t: TensorInfo) -> np.ndarray | None:
    """[n_mat, n_per_row] weights for `t` (n_mat: its experts), None when the imatrix has none or,
    for the token embedding, none of its size (what llama-quantize does)."""
    imp = imatrix.importance(t.name)
    if imp is None:
        return None
    n_per_row, n_mat = t.shape[0], (t.shape[2] if len(t.shape) > 2 else 1)
    if imp.size != n_per_row * n_mat:
        if t.name in TOKEN_EMBEDDINGS:
            return None
        raise ModelFormatError(
            f"{path}: imatrix entry {t.name} has {imp.size} values but the tensor needs "
            f"{n_per_row * n_mat} ({n_mat} x {n_per_row}); this imatrix was made for another model"
        )
    return imp.reshape(n_mat, n_per_row)


def _check_finite(path: Path, imatrix: ImatrixData) -> None:
    for name in imatrix.entries:
        if not np.isfinite(imatrix.importance(name)).all():
            raise ModelFormatError(
                f"{path}: imatrix entry {name} holds non-finite values (llama-quantize refuses it too); "
                "make the imatrix again"
            )


def _converted(
    t: TensorInfo, qtype: GGMLQuantizationType, importance: np.ndarray | None = None
) -> Callable[[], np.ndarray]:
    """Loads `t` re-encoded as `qtype`; `importance` [n_mat, n_per_row] weights each expert's rows
    (rows of a 3-D tensor are expert-major: row r belongs to expert r // ne1)."""

    def load() -> np.ndarray:
        rows = t.data.reshape(-1, t.data.shape[-1])
        block, type_size = GGML_QUANT_SIZES[qtype]
        out = np.empty((rows.shape[0], t.shape[0] // block * type_size), dtype=np.uint8)
        step = max(1, (1 << 20) // t.shape[0])  # dequantize a slab of rows at a time
        rows_per_mat = t.shape[1] if len(t.shape) > 1 else 1
        for start in range(0, rows.shape[0], step):
            slab = replace(t, data=rows[start : start + step])
            values = tensor_values(slab, whole=False)
            if qtype == T.F32:
                out[start : start + step] = values.view(np.uint8)
                continue
            weights = None
            if importance is not None:
                experts = np.arange(start, start + values.shape[0]) // rows_per_mat
                weights = importance[0] if importance.shape[0] == 1 else importance[experts]
            out[start : start + step] = encode(values, qtype, weights)
        return out

    return load


def quantize_gguf(
    src: str | Path,
    dst: str | Path,
    type_name: str,
    *,
    imatrix: str | Path | None = None,
    allow_low_bit_drafter: bool = False,
    allow_requantize: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize `src` into `dst` (temp file + rename), weighted by the importance matrix file
    `imatrix` where given; `progress(values_done, values_total)` after each tensor."""
    src = gguf_input(src, "quantize")
    dst = check_output(src, dst)
    gf = open_gguf(src)
    ft = resolve_file_type(
        type_name,
        drafter=gf.arch in LAYOUT_BY_ARCH,
        allow_low_bit_drafter=allow_low_bit_drafter,
        has_imatrix=imatrix is not None,
    )
    imx = None
    if imatrix is not None:
        imatrix = Path(imatrix)
        imx = read_imatrix(imatrix)
        _check_finite(imatrix, imx)
    specs = [TensorSpec(t.name, t.shape, t.tensor_type) for t in gf.tensors.values()]
    types, fallbacks = plan_types(
        specs,
        ft,
        n_layers=int(gf.arch_value(K.BLOCK_COUNT, 0) or 0),
        n_expert=int(gf.arch_value(K.EXPERT_COUNT, 0) or 0),
        n_gqa=_n_gqa(gf),
        has_imatrix=imx is not None,
    )
    lazy, without = [], []
    for name, t in gf.tensors.items():
        qtype = types[name]
        if qtype == t.tensor_type:
            lazy.append(
                LazyTensor(name, t.data.shape[:-1] + (t.shape[0],), qtype, t.n_bytes, lambda t=t: t.data)
            )
            continue
        if t.tensor_type not in FLOAT_TYPES and qtype not in FLOAT_TYPES and not allow_requantize:
            raise UsageError(
                f"{src}: tensor {name} is already {t.tensor_type.name}; quantizing it again to {qtype.name} "
                "compounds the error. Quantize from an F32/F16/BF16 file (gemma-mtp convert --outtype f16) "
                "or pass --allow-requantize"
            )
        importance = None
        if imx is not None and qtype not in FLOAT_TYPES:
            importance = _importance(imatrix, imx, t)
            if importance is None:
                without.append(name)
                if ft.requires_imatrix and qtype == T.Q2_K and name not in TOKEN_EMBEDDINGS + (OUTPUT,):
                    raise UsageError(
                        f"{imatrix}: no imatrix entry for tensor {name}, which {ft.name} makes Q2_K; "
                        f"llama-quantize refuses it too ({IMATRIX_WHY}). Use an imatrix made for this model"
                    )
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_bytes = t.n_bytes // t.data.shape[-1] * (t.shape[0] // block * type_size)
        lazy.append(
            LazyTensor(
                name, t.data.shape[:-1] + (t.shape[0],), qtype, n_bytes, _converted(t, qtype, importance)
            )
        )
    entries, removed = _entries(gf, ft, imx)
    alignment = gf.value("general.alignment")

    total, done = sum(int(np.prod(t.shape)) for t in lazy), 0

    def report(lt: LazyTensor) -> None:
        nonlocal done
        done += int(np.prod(lt.shape))
        if progress is not None:
            progress(done, total)

    write_gguf_lazy(dst, gf.arch, entries, lazy, alignment=alignment, on_tensor=report)
    return QuantizeResult(
        path=dst,
        file_type=ft,
        types=types,
        fallbacks=fallbacks,
        removed_keys=removed,
        bytes_in=src.stat().st_size,
        bytes_out=dst.stat().st_size,
        imatrix_entries=0 if imx is None else len(imx.entries),
        without_imatrix=without,
    )


def _n_gqa(gf: GGUFFile) -> int:
    """llama.cpp's hparams.n_gqa(): query heads / KV heads of layer 0 (per-layer arrays or one value)."""

    def first(value) -> int:
        return int((value[0] if isinstance(value, list) else value) or 0)

    n_head, n_kv = first(gf.arch_value(K.HEAD_COUNT, 0)), first(gf.arch_value(K.HEAD_COUNT_KV, 0))
    return n_head // n_kv if n_kv else 0
