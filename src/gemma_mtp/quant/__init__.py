"""Quantized weights kept in memory in torch's weight-only kernel formats, and the drop-in modules
that use them (see `policy.py` for which GGUF type goes where and how exact each choice is).

The names are imported lazily: `quant.policy` is data only, and the CLI reads it for ``--help``
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "CODE_TYPES": "codes",
    "GroupCodes": "codes",
    "decode_codes": "codes",
    "Int4GroupWeight": "int4",
    "Int8RowWeight": "int8",
    "BlockRows": "modules",
    "QuantEmbedding": "modules",
    "QuantLinear": "modules",
    "MATRIX_KERNELS": "policy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gemma_mtp.quant' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gemma_mtp.quant.{module}"), name)
    globals()[name] = value
    return value
