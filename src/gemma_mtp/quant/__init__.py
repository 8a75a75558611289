"""Quantized weights kept in memory in torch's weight-only kernel formats, and the drop-in modules
that use them (see `policy.py` for which GGUF type goes where and how exact each choice is)."""

from __future__ import annotations

from .codes import CODE_TYPES, GroupCodes, decode_codes
from .int4 import Int4GroupWeight
from .int8 import Int8RowWeight
from .modules import BlockRows, QuantEmbedding, QuantLinear
from .policy import MATRIX_KERNELS

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
