"""`gemma-mtp quantize`: a GGUF file -> the same model with its matrices in another type, with the
per-tensor mixes llama-quantize makes (`llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp).

What llama-quantize does, and so what we do (for the file types below, without an imatrix):
- Only tensors named `*weight` with 2+ dims are quantized; norms, `ffn_gate_inp`,
  `per_layer_model_proj` and a few tiny tensors keep their type.
- F32/F16/BF16 files: every such tensor takes that type. Quantized file types start from a base
  type; the output head (or the token embedding when it is tied, `per_layer_token_embd` included)
  becomes Q6_K (Q8_0 when its rows do not fit 256-blocks); the `_M` mixes raise `attn_v` and
  `ffn_down` to Q6_K on the layers `use_more_bits` picks (the first and last eighth, every third
  in between).
- Rows that do not fit a type's blocks fall back: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16.
- `general.file_type` and `general.quantization_version` are set. Unlike llama-quantize we copy
  no `quantize.imatrix.*` key and no host path (there is no importance matrix here).
Tensors already in the target type are copied byte for byte; others are dequantized and encoded
by `codecs.encode` (bit-exact with ggml's reference quantizers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from ..errors import UsageError
from ..gguf.codecs import encode
from ..gguf.keys import LAYOUT_BY_ARCH, K
from ..gguf.reader import FLOAT_TYPES, INT_TYPES, GGUFFile, TensorInfo, open_gguf, tensor_values
from ..gguf.writer import QUANTIZATION_VERSION, Entry, LazyTensor, write_gguf_lazy
from .paths import check_output, gguf_input
from .sanitize import find_leaks

__all__ = [
    "FILE_TYPES",
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
    """One `TYPE` of the quantize command: its base tensor type and the mix rules on top."""

    name: str
    file_type: LlamaFileType
    base: GGMLQuantizationType
    attn_v: tuple[str, GGMLQuantizationType] | None = None  # (layer rule, raised type)
    ffn_down: tuple[str, GGMLQuantizationType] | None = None


_FT = LlamaFileType
FILE_TYPES = {
    ft.name: ft
    for ft in (
        FileType(name="F32", file_type=_FT.ALL_F32, base=T.F32),
        FileType(name="F16", file_type=_FT.MOSTLY_F16, base=T.F16),
        FileType(name="BF16", file_type=_FT.MOSTLY_BF16, base=T.BF16),
        FileType(name="Q8_0", file_type=_FT.MOSTLY_Q8_0, base=T.Q8_0),
        FileType(name="Q6_K", file_type=_FT.MOSTLY_Q6_K, base=T.Q6_K),
        FileType(name="Q5_1", file_type=_FT.MOSTLY_Q5_1, base=T.Q5_1),
        FileType(name="Q5_0", file_type=_FT.MOSTLY_Q5_0, base=T.Q5_0),
        FileType(
            name="Q5_K_M",
            file_type=_FT.MOSTLY_Q5_K_M,
            base=T.Q5_K,
            attn_v=("more_bits", T.Q6_K),
            ffn_down=("more_bits", T.Q6_K),
        ),
        FileType(name="Q5_K_S", file_type=_FT.MOSTLY_Q5_K_S, base=T.Q5_K),
        FileType(
            name="Q4_K_M",
            file_type=_FT.MOSTLY_Q4_K_M,
            base=T.Q4_K,
            attn_v=("more_bits", T.Q6_K),
            ffn_down=("more_bits", T.Q6_K),
        ),
        FileType(
            name="Q4_K_S",
            file_type=_FT.MOSTLY_Q4_K_S,
            base=T.Q4_K,
            attn_v=("first_4", T.Q5_K),
            ffn_down=("first_eighth", T.Q5_K),
        ),
        FileType(name="Q4_1", file_type=_FT.MOSTLY_Q4_1, base=T.Q4_1),
        FileType(name="Q4_0", file_type=_FT.MOSTLY_Q4_0, base=T.Q4_0),
    )
}

# llama-quantize types that cost an MTP drafter more in rejected drafts than they save (FACTS.md).
LOW_BIT_TYPES = (
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K", "Q2_K_S",
    "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "Q3_K_S", "Q3_K_M", "Q3_K_L",
)  # fmt: skip
DRAFTER_ADVICE = (
    "a drafter's speed comes from acceptance, and low-bit drafters lose more to rejected drafts "
    "than they save (about 6 points of acceptance from Q8_0 to Q2_K); use Q8_0, Q6_K, Q5_K_M or Q4_K_M"
)
# Fallback of a 256-block type whose rows do not fit (llama.cpp's tensor_type_fallback).
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
# Quantizable tensors are `*weight`, 2+ dims, and none of these (llama.cpp's tensor_allows_quantization).
KEEP_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj")
TOKEN_EMBEDDINGS = ("token_embd.weight", "per_layer_token_embd.weight")
OUTPUT = "output.weight"
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
IMATRIX_PREFIX = "quantize.imatrix."
_LAYER = re.compile(r"blk\.(\d+)\.")


def resolve_file_type(name: str, *, drafter: bool, allow_low_bit_drafter: bool = False) -> FileType:
    """The `TYPE` argument -> its FileType. A low-bit type for a drafter is refused with the reason;
    `--allow-low-bit-drafter` is suggested only where it would help (a type gemma-mtp makes)."""
    key = name.upper()
    supported = f"gemma-mtp quantizes to {', '.join(FILE_TYPES)}"
    low_bit_drafter = key in LOW_BIT_TYPES and drafter
    if key not in FILE_TYPES:
        advice = f"; for an MTP drafter, {DRAFTER_ADVICE}" if low_bit_drafter else ""
        if low_bit_drafter and allow_low_bit_drafter:
            advice += " (--allow-low-bit-drafter lifts only the drafter policy; it adds no types)"
        raise UsageError(f"quantize type {name!r} is not supported: {supported}{advice}")
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


def _layer_rule(rule: str, i_layer: int, n_layers: int) -> bool:
    if rule == "more_bits":
        return _use_more_bits(i_layer, n_layers)
    if rule == "first_4":
        return i_layer < 4
    return i_layer < n_layers // 8  # "first_eighth"


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
        if ft.attn_v and _layer_rule(ft.attn_v[0], c.i_attn_v, c.n_attn_v):
            new = ft.attn_v[1]
        if c.n_expert == 8:
            new = T.Q8_0
        c.i_attn_v += 1
        return new
    if "attn_k.weight" in name and c.n_expert == 8:
        return T.Q8_0
    if "ffn_down" in name:
        if ft.ffn_down and _layer_rule(ft.ffn_down[0], c.layer_of(name), c.n_layers):
            new = ft.ffn_down[1]
        c.i_ffn_down += 1
        return new
    if "attn_output.weight" in name and c.n_expert == 8 and ft.name in ("Q4_K_S", "Q4_K_M"):
        return T.Q5_K
    return new


def _fallback(qtype: GGMLQuantizationType, row: int) -> tuple[GGMLQuantizationType, bool]:
    if row % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype, False
    qtype = FALLBACK.get(qtype, qtype)
    return (qtype if row % GGML_QUANT_SIZES[qtype][0] == 0 else T.F16), True


def plan_types(
    tensors: Sequence[TensorSpec], ft: FileType, *, n_layers: int, n_expert: int = 0
) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    """(target type per tensor, names of the tensors that needed a fallback type)."""
    c = _Counters(
        n_attn_v=sum(_is_attn_v(t.name) for t in tensors),
        n_layers=n_layers,
        n_expert=n_expert,
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


def _entries(gf: GGUFFile, ft: FileType) -> tuple[list[Entry], list[tuple[str, str]]]:
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
    return entries, removed


def _converted(t: TensorInfo, qtype: GGMLQuantizationType) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        rows = t.data.reshape(-1, t.data.shape[-1])
        block, type_size = GGML_QUANT_SIZES[qtype]
        out = np.empty((rows.shape[0], t.shape[0] // block * type_size), dtype=np.uint8)
        step = max(1, (1 << 20) // t.shape[0])  # dequantize a slab of rows at a time
        for start in range(0, rows.shape[0], step):
            slab = replace(t, data=rows[start : start + step])
            values = tensor_values(slab, whole=False)
            out[start : start + step] = values.view(np.uint8) if qtype == T.F32 else encode(values, qtype)
        return out

    return load


def quantize_gguf(
    src: str | Path,
    dst: str | Path,
    type_name: str,
    *,
    allow_low_bit_drafter: bool = False,
    allow_requantize: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize `src` into `dst` (temp file + rename); `progress(values_done, values_total)` after
    each tensor."""
    src = gguf_input(src, "quantize")
    dst = check_output(src, dst)
    gf = open_gguf(src)
    ft = resolve_file_type(
        type_name, drafter=gf.arch in LAYOUT_BY_ARCH, allow_low_bit_drafter=allow_low_bit_drafter
    )
    specs = [TensorSpec(t.name, t.shape, t.tensor_type) for t in gf.tensors.values()]
    types, fallbacks = plan_types(
        specs,
        ft,
        n_layers=int(gf.arch_value(K.BLOCK_COUNT, 0) or 0),
        n_expert=int(gf.arch_value(K.EXPERT_COUNT, 0) or 0),
    )
    lazy = []
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
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_bytes = t.n_bytes // t.data.shape[-1] * (t.shape[0] // block * type_size)
        lazy.append(LazyTensor(name, t.data.shape[:-1] + (t.shape[0],), qtype, n_bytes, _converted(t, qtype)))
    entries, removed = _entries(gf, ft)
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
    )
