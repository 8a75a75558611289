"""Helpers shared by the GGUF tool tests (no tests here): running a command, editing metadata,
a tiny Gemma 4 whose matrices fit 256-value blocks (so K-quants apply)."""

from __future__ import annotations

import argparse
import importlib
import sys
import zlib
from pathlib import Path
from typing import Any

import hf_reference as ref
import numpy as np
import torch
from gguf import GGUFValueType

from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.gguf.reader import open_gguf
from gemma_mtp.gguf.writer import Entry, write_gguf
from gemma_mtp.tools.cli import GGUF_COMMANDS, add_gguf_commands

S, F = ref.S, ref.F
LEAKS = {
    "quantize.imatrix.file": "/home/alice/llama.cpp/imatrix-gemma.dat",
    "quantize.imatrix.dataset": "/data/calibration/wiki.train.raw",
    "general.notes": "/Users/bob/models/gemma.gguf",
}
NOT_LEAKS = {
    "general.source.url": "https://huggingface.co/google/gemma",
    "general.description": "A model; see docs/usage.md for details",
}


def run_cli(argv: list[str]) -> int:
    """`gemma-mtp ARGV`: through `gemma_mtp.cli.main` once it registers the GGUF commands, else
    through a parser with the same contract (exit code; `error: <one line>` on stderr)."""
    main_module = importlib.import_module("gemma_mtp.cli.main")
    if argv[0] in main_module.COMMANDS:
        return main_module.main(argv)
    parser = argparse.ArgumentParser(prog="gemma-mtp")
    add_gguf_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return GGUF_COMMANDS[args.command](args)
    except GemmaMTPError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code


def with_metadata(
    src: Path, dst: Path, extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()
) -> Path:
    """Copy a GGUF with string keys added (or replaced) and keys dropped; tensors byte for byte."""
    gf = open_gguf(src)
    extra = extra or {}
    entries = [
        Entry(k, f.value, f.type, f.sub_type)
        for k, f in gf.fields.items()
        if k not in drop and k not in extra and k != "general.architecture"
    ]
    for key, value in extra.items():
        if isinstance(value, Entry):
            entries.append(value)
        elif isinstance(value, list):
            entries.append(Entry(key, value, GGUFValueType.ARRAY, GGUFValueType.STRING))
        else:
            entries.append(Entry(key, value, GGUFValueType.STRING))
    tensors = [(name, np.asarray(t.data), t.tensor_type) for name, t in gf.tensors.items()]
    return write_gguf(dst, gf.arch, entries, tensors)


def build_wide_gemma4(path: Path, *, seed: int = 7) -> Path:
    """A tiny Gemma 4 (width 256, 8 layers) whose matrices fit K-quant blocks, except ffn_down
    (rows of 320) which falls back; saved as a HF checkpoint."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    text = ref.gemma4_text_kwargs(
        hidden_size=256,
        intermediate_size=320,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        global_head_dim=128,  # a global_head_dim equal to head_dim is not saved by transformers 5.23
        layer_types=[S, S, S, F] * 2,
    )
    torch.manual_seed(seed)
    with ref.reference_patches():
        model = Gemma4ForCausalLM(Gemma4TextConfig(**text))
    ref.randomize_(model, seed)
    with torch.no_grad():  # soft attention (q.k up to ~4, not ~64): logits then degrade with the
        for name, param in model.named_parameters():  # weights' error smoothly, not chaotically
            if name.endswith("q_norm.weight"):
                param.fill_(0.25)
    model.save_pretrained(path, safe_serialization=True)
    return path


def refilled(template: Path, dst: Path) -> Path:
    """The template's metadata, names and shapes with values from numpy's PCG64 seeded by each
    tensor's name: the same bytes on every machine (the source of the llama-quantize fixture)."""
    gf = open_gguf(template)
    entries = [
        Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items() if k != "general.architecture"
    ]
    tensors = []
    for name, t in gf.tensors.items():
        shape = t.data.shape[:-1] + (t.shape[0],)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(0.05 if len(shape) > 1 else 1.0)
        if name == "rope_freqs.weight":
            values = np.asarray(t.data).view(np.float32).reshape(shape)  # a table, not a weight
        tensors.append((name, values, None))
    return write_gguf(dst, gf.arch, entries, tensors)


def wide_source(root: Path) -> Path:
    """The wide Gemma 4 (HF -> F32 GGUF) refilled with deterministic values."""
    from gemma_mtp.tools.convert import convert_hf_to_gguf

    template = convert_hf_to_gguf(build_wide_gemma4(root / "hf"), root / "template.gguf")
    return refilled(template, root / "wide.f32.gguf")


if __name__ == "__main__":  # python tests/test_gguf_tools_helpers.py DIR: writes DIR/wide.f32.gguf
    print(wide_source(Path(sys.argv[1])))
