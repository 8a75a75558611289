"""How rows are named in tables and plots: a target by its quantization (when targets differ in it),
a configuration by the axes that vary among the rows shown together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["quant_of", "target_label", "n_label", "varying", "overall"]


def quant_of(weights: dict[str, Any] | None) -> str | None:
    """`Q4_K_M` from a GGUF's general.file_type, `bf16` for an HF checkpoint, None when unknown."""
    if not weights:
        return None
    if weights.get("format") == "gguf":
        file_type = weights.get("file_type")
        if file_type is None:
            return None
        from gguf import LlamaFileType

        try:
            return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file type {file_type}"
    return weights.get("dtype")


def target_label(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The target's quant type when that tells the targets apart (the seeds' quant axis), else its
    file name; both when two targets share a quant type."""
    targets = {_target(r) for r in rows}
    quants = {_target(r): quant_of(r.get("model_weights")) for r in rows}
    quant = quants.get(_target(row))
    distinct = quant is not None and len(set(quants.values())) == len(targets)
    if distinct and len(targets) > 1:
        return quant
    return f"{_target(row)} ({quant})" if quant else _target(row)


def _target(row: dict[str, Any]) -> str:
    return str(row.get("target") or row.get("model"))  # endpoint rows name the model, not a file


def n_label(row: dict[str, Any], with_p_min: bool) -> str:
    n = row["n_max"]
    text = "plain" if n == 0 else "autotune" if n == "auto" else f"n={n}"
    if with_p_min and n != 0 and row.get("p_min") is not None:
        text += f" p={row['p_min']:g}"
    return text


def varying(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return len({str(r.get(key)) for r in rows}) > 1


def overall(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("category", "all") == "all"]
