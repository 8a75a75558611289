"""Calibration for quantization: importance matrices (`gemma-mtp imatrix`) of targets and of MTP
drafters with their target in the loop.

The names are imported lazily, so that ``gemma-mtp --help`` (which registers imatrix's flags from
`calibrate.options`) does not import torch.
"""

from __future__ import annotations

from gemma_mtp.lazy import lazy_getattr

__all__ = [
    "IMATRIX_DEFAULTS",
    "Accumulator",
    "ImatrixOptions",
    "ImatrixResult",
    "TextSource",
    "bench_text",
    "compute_imatrix",
    "make_imatrix",
    "product_names",
    "read_text",
]

_LAZY = {
    "IMATRIX_DEFAULTS": "gemma_mtp.calibrate.options",
    "ImatrixOptions": "gemma_mtp.calibrate.options",
    "Accumulator": "gemma_mtp.calibrate.imatrix",
    "compute_imatrix": "gemma_mtp.calibrate.imatrix",
    "product_names": "gemma_mtp.calibrate.imatrix",
    "ImatrixResult": "gemma_mtp.calibrate.job",
    "TextSource": "gemma_mtp.calibrate.job",
    "bench_text": "gemma_mtp.calibrate.job",
    "make_imatrix": "gemma_mtp.calibrate.job",
    "read_text": "gemma_mtp.calibrate.job",
}

__getattr__ = lazy_getattr("gemma_mtp.calibrate", _LAZY, globals())
