"""The static decode/verify step (`engine/graphs.py`) on the CPU: the path a CUDA graph captures,
run eagerly on its static buffers, against the plain forward (`target(...)` + `target.logits`).

Reference: the plain forward over a second cache fed the same rounds (prefill, then verify
forwards of T = 1..5 positions with rollbacks between them). Hidden states, logits and the whole
cache state must be equal bit for bit: the static plan only adds slots every query ignores, which
the native one-row attention skips (torch's SDPA, on a GPU, reorders its sums over them).
Capture safety is checked on the CPU too: the first run of each shape is watched for what a
CUDA graph cannot capture (host reads of device values, tensors made from host data on the device).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from native_required import native_or_skip

from gemma_mtp.engine.graphs import (
    EAGER_ENV,
    StaticTargetStep,
    capture_hazards,
    check_graphs_device,
)
from gemma_mtp.errors import UsageError
from gemma_mtp.gguf.reader import open_gguf, tensor_shape, tensor_values
from gemma_mtp.gguf.writer import Entry, write_gguf
from gemma_mtp.quant.torch_blocks import TORCH_BLOCK_TYPES
from gemma_mtp.weights.gguf_loader import load_gguf_model

Q = GGMLQuantizationType
FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
ALL_TORCH = {q.name: "torch" for q in TORCH_BLOCK_TYPES}
CTX, MAX_DRAFT = 64, 4
MIXED = (Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.Q5_1)  # the types gguf-py quantizes
ROUNDS = [(1, 0), (3, 1), (5, 4), (2, 0), (4, 2), (1, 0), (5, 1), (3, 2)]  # (T, drafts accepted)


def quantized_gguf(src: Path, dst: Path, types=(Q.Q8_0,)) -> Path:
    """`src` with every 2-D float matrix whose rows are whole blocks of 32 quantized by gguf-py,
    taking `types` in turn."""
    gf = open_gguf(src)
    tensors = []
    cycle = itertools.cycle(types)
    for name, t in gf.tensors.items():
        shape = tensor_shape(t)
        if len(shape) == 2 and shape[1] % 32 == 0:
            values = np.asarray(tensor_values(t), dtype=np.float32).reshape(shape)
            qtype = next(cycle)
            tensors.append((name, quantize(values, qtype), qtype))
        else:
            tensors.append((name, np.asarray(t.data), t.tensor_type))
    entries = [
        Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items() if k != "general.architecture"
    ]
    return write_gguf(dst, gf.arch, entries, tensors)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> target: float32 fixtures, MoE, and a Q8_0 file on the torch kernel (what a GPU runs)."""
    root = tmp_path_factory.mktemp("static")
    out = {
        name: load_gguf_model(FIXTURES / f"{name}.f32.gguf", dtype="float32")[0]
        for name in ("e2b", "dense31b", "moe")
    }
    path = quantized_gguf(FIXTURES / "dense31b.f32.gguf", root / "dense31b.q8_0.gguf")
    out["dense31b.q8_0.torch"] = load_gguf_model(path, dtype="float32", quantized=True, kernels=ALL_TORCH)[0]
    mixed = quantized_gguf(FIXTURES / "dense31b.f32.gguf", root / "dense31b.mixed.gguf", MIXED)
    out["dense31b.mixed.torch"] = load_gguf_model(mixed, dtype="float32", quantized=True, kernels=ALL_TORCH)[
        0
    ]
    return out


def _cache_state(cache):
    """Everything a forward reads (the trash slot past each buffer's end holds padding's writes)."""
    state = [cache.lengths, cache.written, cache.ring_positions[:, :-1]]
    kv = [cache.keys[i] for i in sorted(cache.keys)] + [cache.values[i] for i in sorted(cache.values)]
    return state + [t[:, :, :-1] for t in kv]


def _same_cache(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_cache_state(a), _cache_state(b), strict=True))


def _rounds(model, rows: list[int], batch: int, seed: int, min_span: int = 16):
    """Prefill `rows`, then the verify rounds of ROUNDS on both paths; yields each comparison."""
    gen = torch.Generator().manual_seed(seed)
    plain = model.make_cache(batch_size=batch, max_context=CTX, max_draft=MAX_DRAFT)
    static = model.make_cache(batch_size=batch, max_context=CTX, max_draft=MAX_DRAFT)
    step = StaticTargetStep(model, static, max_positions=MAX_DRAFT + 1, graphs=False, min_span=min_span)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (len(rows), 7), generator=gen)
    positions = torch.arange(7).expand(len(rows), 7)
    with torch.inference_mode():
        for cache in (plain, static):
            model(prompt, positions, cache, rows=rows)
        for width, accepted in ROUNDS:
            start = plain.lengths[rows]
            tokens = torch.randint(0, vocab, (len(rows), width), generator=gen)
            positions = start[:, None] + torch.arange(width)
            want_hidden = model(tokens, positions, plain, rows=rows).hidden
            want = model.logits(want_hidden)
            got = step.run(tokens, positions, rows)
            yield want_hidden, want, got, plain, static, step
            keep = plain.lengths.clone()
            keep[rows] = start + accepted + 1
            plain.rollback(keep)
            static.rollback(keep, check=False)


@pytest.mark.parametrize("name", ["e2b", "dense31b", "moe", "dense31b.q8_0.torch", "dense31b.mixed.torch"])
def test_the_static_step_is_the_plain_forward_bit_for_bit_round_after_round(models, name):
    native_or_skip()
    for want_hidden, want, got, plain, static, _ in _rounds(models[name], [0], 1, seed=1):
        assert torch.equal(got.hidden, want_hidden)
        assert torch.equal(got.logits, want)
        assert _same_cache(plain, static)


@pytest.mark.parametrize("rows", [[0, 1, 2], [0, 1], [1, 2], [2, 0]], ids=str)
def test_rows_of_a_batch_are_the_plain_forwards_rows(models, rows):
    """All rows (a slice), the first rows (a slice), later rows and unordered rows (index buffers)."""
    native_or_skip()
    for want_hidden, want, got, plain, static, _ in _rounds(models["e2b"], rows, 3, seed=2):
        assert torch.equal(got.hidden, want_hidden) and torch.equal(got.logits, want)
        assert _same_cache(plain, static)


def test_one_static_shape_per_rows_positions_and_span(models):
    """Spans are powers of two from min_span (16 here): positions 7..30 need spans 16 and 32."""
    *_, step = list(_rounds(models["dense31b"], [0], 1, seed=3))[-1]
    widths = {width for width, _ in ROUNDS}
    assert {key[1] for key in step.shapes} == widths
    assert {key[2] for key in step.shapes} == {16, 32}
    assert all(key[0] == 1 and key[3] for key in step.shapes)
    assert [step.span_for(e) for e in (1, 16, 17, 33, 64, 65)] == [16, 16, 32, 64, 64, 64]


def test_building_a_shape_leaves_the_cache_as_it_was(models):
    model = models["e2b"]
    cache = model.make_cache(batch_size=2, max_context=CTX, max_draft=MAX_DRAFT)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.arange(3).expand(2, 3), cache)
        before = [t.clone() for t in _cache_state(cache)]
        step = StaticTargetStep(model, cache, max_positions=3, graphs=False)
        step._build((2, 3, 64, True), None)
        step._build((1, 2, 64, False), [1])
    assert all(torch.equal(a, b) for a, b in zip(before, _cache_state(cache), strict=True))


def test_positions_past_the_cache_and_too_many_positions_are_refused(models):
    model = models["e2b"]
    step = StaticTargetStep(
        model, model.make_cache(max_context=8, max_draft=2), max_positions=3, graphs=False
    )
    with pytest.raises(ValueError, match="position 8 is past the cache size 8"):
        step.run(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[8]]))
    with pytest.raises(ValueError, match="4 positions per row; it takes 1..3"):
        step.run(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None])


# ------------------------------------------------------------------------------ capture safety


def _first_run_hazards(model) -> list[str]:
    cache = model.make_cache(max_context=CTX, max_draft=MAX_DRAFT)
    step = StaticTargetStep(model, cache, max_positions=MAX_DRAFT + 1, graphs=False)
    with torch.inference_mode():
        model(torch.tensor([[3, 4, 5]]), torch.arange(3)[None], cache)
    step.run(torch.tensor([[7, 8]]), torch.tensor([[3, 4]]))
    (hazards,) = step.hazards.values()
    return hazards


@pytest.mark.parametrize("name", ["dense31b.q8_0.torch", "dense31b.mixed.torch"])
def test_a_target_on_the_torch_kernel_has_nothing_a_graph_cannot_capture(models, name):
    assert _first_run_hazards(models[name]) == []


def test_what_a_graph_cannot_capture_is_named_with_its_place(models):
    moe = _first_run_hazards(models["moe"])
    assert any(h.startswith("Tensor.tolist at models/moe.py") for h in moe), moe


@pytest.mark.parametrize("name", ["e2b", "dense31b"])
def test_a_float_target_has_nothing_a_graph_cannot_capture(models, name):
    # the float embeddings' scale is a tensor made once, not one made from host data per call
    assert _first_run_hazards(models[name]) == []


def test_the_watch_sees_host_reads_and_host_data():
    x = torch.arange(6)
    with capture_hazards() as found:
        x.sum().item()
        int(x[0])
        x[x > 2]
        torch.where(x > 1)
        torch.tensor([1, 2], device="cpu")
        torch.tensor(2.0)  # a CPU scalar: a kernel argument, never a copy
        x * 2
    assert [h.split(" at ")[0] for h in found] == [
        "Tensor.item",
        "int(tensor)",
        "boolean or tensor-bounded indexing",
        "torch.where(condition)",
        "torch.tensor(..., device=...) copies host data to the device",
    ]


def test_the_cache_plan_in_static_shapes_does_not_read_the_device():
    from gemma_mtp.config import TextConfig  # noqa: F401  (the plan is the cache's alone)

    model = load_gguf_model(FIXTURES / "e2b.f32.gguf", dtype="float32")[0]
    cache = model.make_cache(batch_size=2, max_context=CTX, max_draft=MAX_DRAFT)
    positions = torch.tensor([[0, 1], [0, -1]])
    cache.plan(positions, [0, 1])  # outside: plain plans read the lengths back
    with cache.static_shapes(32):
        cache.plan(positions, [0, 1])  # the first static plan of these rows makes their index
        with capture_hazards() as found:
            plan = cache.plan(positions, [0, 1])
            cache.plan(positions, torch.tensor([1, 0]))
            shared = cache.shared_kv("full_attention")
    assert found == []
    assert plan.full_span == 32 and plan.ring_span == cache.ring_size
    assert shared.keys.shape[2] == 32
    with pytest.raises(ValueError, match="static span 65: use 1..64"):
        with cache.static_shapes(65):
            pass
    assert cache.static_span is None


def test_rollback_without_checks_moves_the_lengths_on_the_device():
    model = load_gguf_model(FIXTURES / "e2b.f32.gguf", dtype="float32")[0]
    cache = model.make_cache(batch_size=2, max_context=CTX, max_draft=MAX_DRAFT)
    cache.lengths.copy_(torch.tensor([5, 3]))
    address = cache.lengths.data_ptr()
    with capture_hazards() as found:
        cache.rollback(torch.tensor([4, 3]), check=False)
    assert found == [] and cache.lengths.tolist() == [4, 3] and cache.lengths.data_ptr() == address


# ------------------------------------------------------------------------------ the option


def test_graphs_off_cuda_are_refused_unless_the_eager_path_is_asked_for(monkeypatch):
    monkeypatch.delenv(EAGER_ENV, raising=False)
    with pytest.raises(UsageError, match="--cuda-graphs needs a CUDA device"):
        check_graphs_device("cpu")
    monkeypatch.setenv(EAGER_ENV, "1")
    assert check_graphs_device("cpu") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_graph_step_without_cuda_is_refused(models):
    model = models["e2b"]
    with pytest.raises(UsageError, match="no CUDA device"):
        StaticTargetStep(model, model.make_cache(max_context=8), max_positions=2, graphs=True)


def test_a_model_with_parts_on_the_cpu_is_refused_for_graphs(models):
    """A graph replays only GPU work: layers or experts left on the CPU would be skipped."""
    from gemma_mtp.engine.graphs import _check_all_on_cuda

    model = models["e2b"]
    with pytest.raises(UsageError, match="a graph replays only GPU work: use -ngl all and --n-cpu-moe 0"):
        _check_all_on_cuda(model, model.make_cache(max_context=8))
