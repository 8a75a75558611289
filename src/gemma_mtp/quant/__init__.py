"""Quantized weights kept in memory in torch's weight-only kernel formats, and the drop-in modules
that use them (see `policy.py` for which GGUF type goes where and how exact each choice is).

The names are imported lazily: `quant.policy` is data only, and the CLI reads it for ``--help``
without importing torch.
"""

from __future__ import annotations

from gemma_mtp.lazy import lazy_getattr

__all__ = [
    "CODE_TYPES",
    "GroupCodes",
    "decode_codes",
    "Int4GroupWeight",
    "Int8RowWeight",
    "BlockRows",
    "QuantEmbedding",
    "QuantLinear",
    "MATRIX_KERNELS",
]

_LAZY = {
    "CODE_TYPES": "gemma_mtp.quant.codes",
    "GroupCodes": "gemma_mtp.quant.codes",
    "decode_codes": "gemma_mtp.quant.codes",
    "Int4GroupWeight": "gemma_mtp.quant.int4",
    "Int8RowWeight": "gemma_mtp.quant.int8",
    "BlockRows": "gemma_mtp.quant.modules",
    "QuantEmbedding": "gemma_mtp.quant.modules",
    "QuantLinear": "gemma_mtp.quant.modules",
    "MATRIX_KERNELS": "gemma_mtp.quant.policy",
}


__getattr__ = lazy_getattr("gemma_mtp.quant", _LAZY, globals())
