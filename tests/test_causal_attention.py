"""Prefill attention takes SDPA's causal path when the mask is a first prefill's (ops.causal_start)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gemma_mtp import ops


def causal(t: int, s: int) -> torch.Tensor:
    """[1, 1, t, s]: the last t keys causal, the ones before them masked (an empty ring)."""
    mask = torch.zeros(1, 1, t, s, dtype=torch.bool)
    mask[..., s - t :] = torch.ones(t, t, dtype=torch.bool).tril()
    return mask


@pytest.mark.parametrize("t,s", [(40, 40), (40, 73), (64, 128)])
def test_a_first_prefill_mask_is_recognised(t, s):
    assert ops.causal_start(causal(t, s)) == s - t


def test_other_masks_keep_the_explicit_path():
    mask = causal(40, 40)
    windowed = mask & ~torch.ones(40, 40, dtype=torch.bool).tril(
        -8
    )  # a sliding window shorter than the prompt
    assert ops.causal_start(windowed) is None
    earlier = causal(40, 50)
    earlier[..., 3] = True  # keys before the prompt that its queries see (a later chunk)
    assert ops.causal_start(earlier) is None
    padded = causal(40, 40).repeat(2, 1, 1, 1)
    padded[1, ..., :2] = False  # one batch row's first keys are padding
    assert ops.causal_start(padded) is None
    assert ops.causal_start(causal(40, 40).float()) is None  # not a boolean mask
    assert ops.causal_start(causal(40, 40)[..., 1:, :]) is None  # fewer keys than the square needs


@pytest.mark.parametrize("t,s", [(40, 40), (48, 97)])
def test_the_causal_path_gives_the_masked_attention(t, s):
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, t, 32), torch.randn(1, 2, s, 32), torch.randn(1, 2, s, 32)
    mask = causal(t, s)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2, enable_gqa=True)
    got = ops.attention(q, k, v, mask, scale=0.2)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(1, t, -1), rtol=1e-5, atol=1e-5)


def test_short_forwards_never_look_at_the_mask(monkeypatch):
    """Decode and verify forwards (captured as CUDA graphs on a GPU) must not sync on the mask."""
    monkeypatch.setattr(ops, "causal_start", lambda mask: pytest.fail("looked at a short forward's mask"))
    t = ops.ROW_ATTENTION_MAX_T
    q, k, v = (
        torch.randn(1, 2, t, 16, dtype=torch.float64),
        torch.randn(1, 2, t, 16, dtype=torch.float64),
        torch.randn(1, 2, t, 16, dtype=torch.float64),
    )
    ops.attention(q, k, v, causal(t, t), scale=0.25)
