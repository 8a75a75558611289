"""Which kernel holds each GGUF type (data), and what that costs in exactness (stated once, here);
and which types `gemma-mtp quantize` refuses for an MTP drafter (`DRAFTER_LOW_BIT_TYPES`).

`MATRIX_KERNELS` is the default for matrices used in matmuls (linear layers, the tied head): our
native kernel reading the GGUF blocks in place (`blocks.py`: the weights are the file's bytes, so
memory stays at the file size). Our block-int8 format (`q8.py`: the same exact weights unpacked to
one byte per code, more memory) is the other native choice. Where the native module cannot be
built (no C++ compiler), `FALLBACK_KERNELS` names torch's weight-only kernels instead.
A caller may name a kernel per type (`load_gguf_model(kernels={"Q8_0": "int8"})`). Lookup-only
tables (per-layer embeddings) keep their GGUF blocks as they are and decode looked-up rows
exactly, whatever the type.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType

__all__ = [
    "MATRIX_KERNELS",
    "FALLBACK_KERNELS",
    "FLOAT_REASONS",
    "KERNEL_NOTES",
    "EXACTNESS",
    "KINDS",
    "NATIVE_KINDS",
    "LOWBIT_TYPES",
    "DRAFTER_LOW_BIT_TYPES",
    "DRAFTER_ADVICE",
]

Q = GGMLQuantizationType
KINDS = ("gguf", "q8", "int4", "int8", "torch", "float")
NATIVE_KINDS = ("gguf", "q8")

# The low-bit types ggml's Q2_K, Q3_K_M, IQ2_M, IQ3_M ... mixes are made of: only the gguf kernel
# reads them (they have no integer-code form for the other formats, `codes.py`).
LOWBIT_TYPES = (
    Q.Q2_K,
    Q.Q3_K,
    Q.IQ4_NL,
    Q.IQ4_XS,
    Q.IQ3_XXS,
    Q.IQ3_S,
    Q.IQ2_XXS,
    Q.IQ2_XS,
    Q.IQ2_S,
    Q.IQ1_S,
    Q.IQ1_M,
)
MATRIX_KERNELS: dict[GGMLQuantizationType, str] = {
    t: "gguf" for t in (Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q8_0, Q.Q6_K, *LOWBIT_TYPES)
}
# The measured error of each choice on the real Gemma 3 270M (logits vs the float32 dequantized
# model, 121 positions): bf16 dequantized rel-L2 0.0108; int4 for Q8_0/Q5_0/Q4_K 0.0108;
# int8 re-quantized Q8_0 head + int4 layers 0.0136; int8 for every type 0.027 (Q5_0 rows suffer).
FALLBACK_KERNELS: dict[GGMLQuantizationType, str] = {
    Q.Q4_0: "int4",
    Q.Q4_1: "int4",
    Q.Q4_K: "int4",
    Q.Q5_0: "int4",
    Q.Q5_1: "int4",
    Q.Q5_K: "int4",
    Q.Q8_0: "int4",
    Q.Q6_K: "float",
}
FLOAT_REASONS = {
    Q.Q6_K: "no exact kernel (16-wide groups; int4pack takes 32 and up, int8 rows would re-quantize)",
    **{t: "only the native gguf kernel reads these blocks, and it is not in use" for t in LOWBIT_TYPES},
}

KERNEL_NOTES = {
    "gguf": "native kernel on the GGUF blocks in place",
    "q8": "native block-int8 kernel",
    "int4": "int4pack, group 32",
    "int8": "int8pack, one scale per row",
    "blocks": "GGUF blocks kept as stored, rows decoded on lookup",
    "torch": "torch ops on the GGUF blocks in place (any device), a tile of rows decoded at a time",
    "half": "native kernel on the file's 2-byte values in place",
    "float": "dequantized",
}

# What a kernel's weights are, compared with `gguf.quants.dequantize` (tests hold each bound).
EXACTNESS = {
    (
        "gguf",
        None,
    ): "weights exact (the file's bytes), activations rounded to int8 per 32 inputs (per 256 for Q4_K/Q5_K/Q6_K), as llama.cpp",
    ("q8", None): "weights exact, activations rounded to int8 per 32 inputs (as llama.cpp)",
    ("int4", True): "exact up to the bfloat16 rounding of each block scale (|dw| <= 2^-8 |w|)",
    ("int4", False): "bfloat16 block scale and zero (|dw| <= 2^-7 max|w| of its 32-group)",
    ("int8", None): "re-quantized per row, lossy (|dw| <= max|w_row| / 254)",
    ("blocks", None): "exact",
    ("torch", None): "weights exact (the file's bytes), products in the activations' dtype",
    ("half", None): "weights exact (the file's bytes), float32 products",
}

# llama-quantize types refused for an MTP drafter unless --allow-low-bit-drafter (FACTS.md: practice
# says they cost more rejected drafts than they save). gemma-mtp has not measured that cost: no
# benchmark in this repository quantizes a drafter below Q4_K_M, so the advice says so.
DRAFTER_LOW_BIT_TYPES = (
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K", "Q2_K_S",
    "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "Q3_K_S", "Q3_K_M", "Q3_K_L",
)  # fmt: skip
DRAFTER_ADVICE = (
    "a drafter's speed comes from acceptance, and low-bit drafters lose some of it: measured on the "
    "demo drafter (benchmarks/bench_drafter_quant.py, n_max 3, temperature 0.3, 3 reps), first-draft "
    "acceptance 0.34 at Q8_0, 0.29 at Q3_K_M and Q2_K (0.32 and 0.31 with its own imatrix, "
    "`gemma-mtp imatrix -md`); one outside report puts Q8_0 -> Q2_K at about 6 points; "
    "use Q8_0, Q6_K, Q5_K_M or Q4_K_M"
)
