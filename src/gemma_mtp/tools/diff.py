"""How two GGUF files differ (`gemma-mtp diff`): metadata keys and tensors side by side, as a
JSON-ready dict for the CLI to format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from ..gguf.reader import Field, open_gguf, tensor_shape
from .paths import gguf_input

__all__ = ["diff_gguf", "describe_value"]

MAX_SHOWN = 80  # characters of a metadata value shown in a diff


def describe_value(f: Field) -> str:
    """A metadata value on one line: arrays by type and length (and a short preview)."""
    if f.type == GGUFValueType.ARRAY:
        sub = f.sub_type.name.lower() if f.sub_type is not None else "?"
        preview = ", ".join(repr(v) for v in f.value[:4])
        more = ", ..." if len(f.value) > 4 else ""
        return f"[{len(f.value)} x {sub}: {preview}{more}]"
    text = repr(f.value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def diff_gguf(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Metadata keys only in A, only in B, and present in both with different values (or types);
    and the same for tensors (by name: type and shape)."""
    fa, fb = open_gguf(gguf_input(a, "diff")), open_gguf(gguf_input(b, "diff"))
    only_a = [{"key": k, "a": describe_value(f)} for k, f in fa.fields.items() if k not in fb.fields]
    only_b = [{"key": k, "b": describe_value(f)} for k, f in fb.fields.items() if k not in fa.fields]
    different = [
        {"key": k, "a": describe_value(f), "b": describe_value(fb.fields[k])}
        for k, f in fa.fields.items()
        if k in fb.fields and f != fb.fields[k]
    ]

    def tensor(t) -> str:
        return f"{t.tensor_type.name} {list(tensor_shape(t))}"

    ta, tb = fa.tensors, fb.tensors
    return {
        "a": str(fa.path),
        "b": str(fb.path),
        "metadata": {"only_in_a": only_a, "only_in_b": only_b, "different": different},
        "tensors": {
            "only_in_a": [{"name": n, "a": tensor(t)} for n, t in ta.items() if n not in tb],
            "only_in_b": [{"name": n, "b": tensor(t)} for n, t in tb.items() if n not in ta],
            "different": [
                {"name": n, "a": tensor(t), "b": tensor(tb[n])}
                for n, t in ta.items()
                if n in tb and (t.tensor_type, t.shape) != (tb[n].tensor_type, tb[n].shape)
            ],
        },
        "identical_metadata": not (only_a or only_b or different),
    }
