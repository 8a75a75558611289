"""The fused float32 CPU ops (`native/csrc/q8_mm.cpp`: RMS norm, per-head norm + rotary) against the
torch formulas they replace, and the guard that keeps autograd on the torch path."""

from __future__ import annotations

import pytest
import torch
from asset_helpers import gemma3_270m
from native_required import native_or_skip

from gemma_mtp.models.common import RMSNorm, apply_rope, norm_rope
from gemma_mtp.ops import native_for


@pytest.fixture(scope="module")
def ops():
    return native_or_skip()


def _torch_norm(x, w, eps):
    out = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    return out if w is None else out * w


@pytest.mark.parametrize("scaled", [True, False])
def test_rms_norm_matches_the_torch_formula(ops, scaled):
    x = torch.randn(3, 5, 640) * 7
    w = torch.randn(640) if scaled else None
    got = ops.rms_norm(x, w if scaled else torch.empty(0), 1e-6)
    assert torch.allclose(got, _torch_norm(x, w, 1e-6), rtol=1e-5, atol=1e-6)


def test_head_norm_rope_matches_norm_then_rope(ops):
    x = torch.randn(2, 3, 4, 64)
    w = torch.randn(64)
    angles = torch.randn(2, 3, 32)
    cos = torch.cat([angles, angles], -1).cos()
    sin = torch.cat([angles, angles], -1).sin()
    got = ops.head_norm_rope(x, w, 1e-6, cos, sin)
    assert torch.allclose(got, apply_rope(_torch_norm(x, w, 1e-6), cos, sin), rtol=1e-5, atol=1e-6)
    # no rotation when cos is empty (the value norm)
    plain = ops.head_norm_rope(x, torch.empty(0), 1e-6, torch.empty(0), torch.empty(0))
    assert torch.allclose(plain, _torch_norm(x, None, 1e-6), rtol=1e-5, atol=1e-6)


def test_modules_take_the_fused_path_only_outside_autograd_and_float32(ops):
    norm = RMSNorm(64, 1e-6, offset=1.0)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 4, 64)
    assert native_for(x, norm.weight) is None  # the weight requires grad: training keeps torch ops
    with torch.no_grad():
        assert native_for(x, norm.weight) is ops
        fused = norm(x)
        rope = norm_rope(norm, x, None, None)
    assert native_for(x.bfloat16()) is None
    want = _torch_norm(x, norm.weight.detach() + 1.0, 1e-6)
    assert torch.allclose(fused, want, rtol=1e-5, atol=1e-6) and torch.equal(rope, fused)
    y = norm(x)  # with grad: the torch path, and gradients reach the weight
    y.sum().backward()
    assert norm.weight.grad is not None and torch.allclose(y, want, rtol=1e-5, atol=1e-6)


def test_a_changed_weight_is_picked_up(ops):
    norm = RMSNorm(32, 1e-6).requires_grad_(False)
    x = torch.randn(1, 32)
    first = norm(x)
    norm.weight.mul_(2)
    assert torch.allclose(norm(x), 2 * first)


@pytest.mark.parametrize("cap", [0.0, 20.0])
def test_row_attention_matches_sdpa_and_is_the_same_for_any_number_of_queries(ops, cap):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 64, generator=g)  # [B, T, Hq, D]
    k = torch.randn(2, 2, 9, 64, generator=g)  # [B, Hkv, S, D]
    v = torch.randn(2, 2, 9, 64, generator=g)
    positions = torch.tensor([[4, 5, 6, 7, 8], [2, 3, 4, -1, -1]])
    mask = (torch.arange(9)[None, None, None, :] <= positions[:, None, :, None]).expand(2, 1, 5, 9)
    mask = mask | (torch.arange(9) == 0)  # padding queries see slot 0, as the cache's masks do
    got = ops.attend_rows(q, k, v, mask, 0.125, cap)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = torch.matmul(q.transpose(1, 2), kk.transpose(2, 3)) * 0.125
    if cap:
        scores = torch.tanh(scores / cap) * cap
    want = torch.matmul(torch.softmax(scores.masked_fill(~mask, -torch.inf), -1), vv)
    assert torch.allclose(got, want.transpose(1, 2).reshape(2, 5, 256), atol=1e-5)
    for t in range(5):  # one query at a time: bit for bit the same rows
        assert torch.equal(
            ops.attend_rows(q[:, t : t + 1], k, v, mask[:, :, t : t + 1], 0.125, cap), got[:, t : t + 1]
        )


def test_real_model_forward_over_drafts_equals_one_position_forwards():
    """The property lossless greedy speculation rests on: with the default (quantized) load, a
    forward over 4 positions gives each position's logits bit for bit as 4 single forwards do."""
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    path = gemma3_270m()
    native_or_skip()
    model, _, _ = load_gguf_model(path)
    assert model.embed_tokens.table.kind == "gguf"
    tokens = torch.tensor([[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000]])

    def run(split: bool) -> torch.Tensor:
        cache = model.make_cache(batch_size=1, max_context=64, max_draft=8)
        model(tokens[:, :8], torch.arange(8)[None], cache)
        if not split:
            return model.logits(model(tokens[:, 8:], torch.arange(8, 12)[None], cache).hidden)
        steps = [model(tokens[:, i : i + 1], torch.tensor([[i]]), cache).hidden for i in range(8, 12)]
        return model.logits(torch.cat(steps, 1))

    with torch.no_grad():
        assert torch.equal(run(True), run(False))


def test_a_scale_first_made_in_inference_mode_serves_autograd_later():
    norm = RMSNorm(16, 1e-6, offset=1.0).requires_grad_(False)
    with torch.inference_mode():
        norm(torch.randn(2, 16))
    x = torch.randn(2, 16, requires_grad=True)
    norm(x).sum().backward()  # an inference tensor saved for backward would raise here
    assert x.grad is not None


@pytest.mark.parametrize("name", ["gemma3", "e2b", "dense31b", "moe"])
def test_native_layer_blocks_give_the_module_path_bit_for_bit(
    ops, reference_models, tmp_path, name, monkeypatch
):
    """`models/native_blocks.py`: each layer's attention and feed-forward halves in one native call
    compose the same kernels in the same order as the modules do, so decode and verify forwards
    give the very same logits (e2b: v norm, layer scalar, per-layer inputs, KV-shared layers that
    read an earlier layer's KV; 31b-like: k = v, soft-capping; MoE layers keep their feed-forward on
    the module path)."""
    import gemma_mtp.models.native_blocks as blocks
    from gemma_mtp.tools.convert import convert_hf_to_gguf
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    path = convert_hf_to_gguf(reference_models.target(name).path, tmp_path / f"{name}.gguf", out_type="Q8_0")
    model, _, _ = load_gguf_model(path)
    # swapped in at load: the layers that qualify are NativeDecoderLayers with their block specs
    assert all(isinstance(layer, blocks.NativeDecoderLayer) for layer in model.layers)
    assert any(layer.native_specs[0] is not None for layer in model.layers)
    assert all(layer.native_specs[1] is not None for layer in model.layers if not layer.moe)
    tokens = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))

    def run() -> torch.Tensor:
        cache = model.make_cache(batch_size=2, max_context=64, max_draft=4)
        with torch.inference_mode():
            model(tokens[:, :8], torch.arange(8).expand(2, 8), cache)
            out = [model(tokens[:, 8:9], torch.full((2, 1), 8), cache).hidden]
            out.append(model(tokens[:, 9:12], torch.arange(9, 12).expand(2, 3), cache).hidden)
            return model.logits(torch.cat(out, 1))

    native = run()
    monkeypatch.setattr(blocks, "ops_for", lambda x: None)
    assert torch.equal(native, run())


def test_native_blocks_give_an_assistant_step_bit_for_bit(ops, reference_models, tmp_path, monkeypatch):
    """Assistant layers read the target's KV (q only): the native attention block there too."""
    import dataclasses

    from test_gguf_helpers import synthetic_shared_kv

    import gemma_mtp.models.native_blocks as blocks
    from gemma_mtp.tools.convert import convert_hf_to_gguf
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    reference = reference_models.assistant("e2b", ordered=True)
    path = convert_hf_to_gguf(reference.path, tmp_path / "drafter.gguf", out_type="Q8_0")
    model, config, _ = load_gguf_model(path)
    assert all(layer.native_specs[0] is not None for layer in model.model.layers)
    shared = {
        kind: dataclasses.replace(kv, keys=kv.keys.float(), values=kv.values.float())
        for kind, kv in synthetic_shared_kv(config.text).items()
    }
    x = torch.randn(1, 1, 2 * config.backbone_hidden_size, generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[5]])
    taken = []

    def spy(*args):
        out = real(*args)
        taken.append(out is not None)
        return out

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model.step(x, model.prepare(positions, shared))

    real = blocks.run_attention
    monkeypatch.setattr(blocks, "run_attention", spy)
    native = run()
    assert taken and all(taken)
    monkeypatch.setattr(blocks, "ops_for", lambda x: None)
    assert torch.equal(native, run())


def test_argmax_rows_is_torch_argmax_ties_and_nans_included(ops):
    x = torch.randn(5, 262_147, generator=torch.Generator().manual_seed(4))
    x[1, 1000] = x[1, 70_000] = x[1].max() + 1  # a tie: the first index wins
    x[2, :] = 0.0  # all equal
    x[3, 5] = float("nan")  # torch.argmax gives a NaN's index
    x[4, -1] = x[4].max() + 1  # the maximum in the scalar tail
    assert torch.equal(ops.argmax_rows(x), x.argmax(dim=-1))
    assert torch.equal(ops.argmax_rows(x[:, :7]), x[:, :7].argmax(dim=-1))  # rows shorter than a vector


@pytest.mark.parametrize("kind", ["mtp", "ngram"])
def test_batched_speculation_on_native_blocks_equals_each_row_alone(ops, reference_models, tmp_path, kind):
    """The native path end to end: a Q8_0 target and drafter, several rows of different lengths in
    one batch (padding, rows idle in some rounds), drafts verified over several positions with the
    KV written by the native block: every row gets plain greedy decoding's tokens."""
    from gemma_mtp.engine.batch import BatchDecoder
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions
    from gemma_mtp.speculative.mtp import MTPDrafter
    from gemma_mtp.speculative.ngram import NgramDrafter
    from gemma_mtp.tools.convert import convert_hf_to_gguf
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    target_path = convert_hf_to_gguf(
        reference_models.target("e2b").path, tmp_path / "t.gguf", out_type="Q8_0"
    )
    draft_ref = reference_models.assistant("e2b", ordered=True)
    draft_path = convert_hf_to_gguf(draft_ref.path, tmp_path / "d.gguf", out_type="Q8_0")
    target, config, _ = load_gguf_model(target_path)
    assistant, _, _ = load_gguf_model(draft_path)
    assert target.layers[0].native_specs[0] is not None
    gen = torch.Generator().manual_seed(3)
    motif = torch.randint(3, config.vocab_size, (5,), generator=gen).tolist()
    prompts = [
        [2, *motif * 3],
        [2, *torch.randint(3, config.vocab_size, (9,), generator=gen).tolist()],
        [2, 7],
    ]

    def run(batch: int, spec: SpecOptions, rows: list[list[int]]) -> list[list[int]]:
        decoder = BatchDecoder(target, max_batch=batch, ctx_size=96)
        decoder.drafters = {"mtp": MTPDrafter(target, assistant, decoder.cache), "ngram": NgramDrafter()}
        greedy = SamplingParams(temperature=0)
        slots = [decoder.add(p, n_predict=20, sampling=greedy, spec=spec, stop_ids=frozenset()) for p in rows]
        while decoder.active():
            decoder.step()
        return [s.generated for s in slots]

    alone = [run(1, SpecOptions(), [p])[0] for p in prompts]
    assert run(3, SpecOptions(type=kind, n_max=3), prompts) == alone
