"""`-ngl auto` and `--n-cpu-moe`: the placement plan (`weights/placement.py`), a pure function of
tensor sizes and a stated device capacity, so no GPU is needed.

Tensor tables: the committed llama.cpp fixture GGUFs (tests/fixtures/llama_cpp), and the released
31B / 26B-A4B shapes in llama-quantize's Q4_K_M / Q8_0 mixes (`tools/shaped_gguf.plan_tensors`,
the tables `scripts/make_shaped_gguf.py` writes, without writing them). Differential checks: the
plan's KV bytes are what `cache.KVCache` allocates, its weight bytes what the loader holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gemma_mtp.cache import KVCache
from gemma_mtp.weights.placement import (
    RESERVE_BYTES,
    PlacementError,
    device_capacity,
    gguf_sizes,
    kv_bytes,
    model_sizes,
    parse_bytes,
    plan_placement,
)

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
GIB = 2**30


def shaped(shape: str, target_type: str = "Q4_K_M", drafter_type: str = "Q8_0", **kw):
    """(target sizes, drafter sizes) of a released shape, bfloat16 on the device."""
    from gemma_mtp.tools.quantize import FILE_TYPES
    from gemma_mtp.tools.shaped_gguf import plan_tensors
    from gemma_mtp.tools.shapes import shape_configs

    text, assistant, _ = shape_configs(shape)

    def table(config, file_type):
        return [(t.name, t.shape, t.qtype) for t in plan_tensors(config, FILE_TYPES[file_type])]

    target = model_sizes(
        table(text, target_type),
        text.num_layers,
        dtype_bytes=2,
        kv_per_layer=kv_bytes(text, dtype_bytes=2),
        **kw,
    )
    drafter = model_sizes(table(assistant, drafter_type), assistant.text.num_layers, dtype_bytes=2)
    return target, drafter


@pytest.fixture(scope="module")
def dense31b():
    return shaped("31b")


def need(target, drafter, n: int, ctx: int = 4096) -> int:
    return (
        target.on_device(n, ctx)
        + (drafter.on_device(len(drafter.layers), ctx) if drafter else 0)
        + RESERVE_BYTES
    )


def test_the_31b_q4_k_m_tables_add_up_to_the_file(dense31b):
    target, drafter = dense31b
    assert 17 * GIB < target.file_bytes < 18 * GIB  # the released 31B at Q4_K_M is ~17.4 GiB
    assert len(target.layers) == 60 and not any(target.experts)
    # every matrix stays quantized; only vectors become bfloat16 (half their float32 bytes)
    assert target.file_bytes - (16 << 20) < sum(target.layers) + target.rest <= target.file_bytes


def test_when_everything_fits_every_layer_goes_with_the_head(dense31b):
    target, drafter = dense31b
    plan = plan_placement(target, drafter, capacity=24 * GIB, ctx=4096)
    assert plan.n_gpu_layers == 60 and plan.n_gpu_layers_draft == len(drafter.layers)
    assert plan.device_bytes == need(target, drafter, 60) <= 24 * GIB


@pytest.mark.parametrize("capacity_gib", [4, 12, 16])
def test_auto_takes_the_most_target_layers_that_fit_beside_the_drafter_and_kv(dense31b, capacity_gib):
    target, drafter = dense31b
    capacity = capacity_gib * GIB
    n = plan_placement(target, drafter, capacity=capacity, ctx=4096).n_gpu_layers
    assert 0 < n < 60
    assert need(target, drafter, n) <= capacity < need(target, drafter, n + 1)


def test_a_longer_context_leaves_room_for_fewer_layers(dense31b):
    target, drafter = dense31b
    short = plan_placement(target, drafter, capacity=16 * GIB, ctx=4096).n_gpu_layers
    long = plan_placement(target, drafter, capacity=16 * GIB, ctx=65536).n_gpu_layers
    assert long < short


def test_a_drafter_kept_on_the_cpu_leaves_its_room_to_the_target(dense31b):
    target, drafter = dense31b
    beside = plan_placement(target, drafter, capacity=12 * GIB, ctx=4096)
    alone = plan_placement(target, drafter, capacity=12 * GIB, ctx=4096, n_gpu_layers_draft=0)
    assert alone.n_gpu_layers > beside.n_gpu_layers and alone.n_gpu_layers_draft == 0


def test_nothing_fitting_is_an_error_before_loading_that_says_what_would(dense31b):
    target, drafter = dense31b
    with pytest.raises(PlacementError) as err:
        plan_placement(target, drafter, capacity=int(1.5 * GIB), ctx=4096)
    message = str(err.value)
    assert "not one target layer fits" in message
    assert "-ngld 0" in message and "a smaller quant" in message and "--device cpu" in message


def test_an_explicit_ngl_that_does_not_fit_names_the_ngl_and_the_ctx_that_would(dense31b):
    target, drafter = dense31b
    with pytest.raises(PlacementError) as err:
        plan_placement(target, drafter, capacity=20 * GIB, ctx=131072, n_gpu_layers=-1)
    message = str(err.value)
    assert message.startswith("-ngl all: 60 target layers need")
    fewer = int(message.split("use -ngl ")[1].split(";")[0])
    assert need(target, drafter, fewer, 131072) <= 20 * GIB < need(target, drafter, fewer + 1, 131072)
    ctx = int(message.split("; or -c ")[1].split(" ")[0])
    assert need(target, drafter, 60, ctx) <= 20 * GIB < need(target, drafter, 60, ctx + 1)


def test_an_explicit_ngl_that_fits_is_kept(dense31b):
    target, drafter = dense31b
    assert plan_placement(target, drafter, capacity=24 * GIB, ctx=4096, n_gpu_layers=10).n_gpu_layers == 10


def test_n_cpu_moe_keeps_the_experts_of_the_first_layers_off_the_device():
    # the 26B-A4B with its expert stacks counted at their file size (as 3-D blocks would be)
    target, _ = shaped("26b-a4b", kept_quantized=lambda entry: entry[2].name not in ("F32", "F16", "BF16"))
    assert all(target.experts) and len(target.layers) == 30
    n_layers = len(target.layers)
    for n_cpu_moe in (0, 5, 30):
        plan = plan_placement(target, None, capacity=24 * GIB, ctx=4096, n_cpu_moe=n_cpu_moe)
        assert plan.n_gpu_layers == n_layers
        assert plan.device_bytes == need(target, None, n_layers) - sum(target.experts[:n_cpu_moe])
    with pytest.raises(PlacementError, match=r"--n-cpu-moe (\d+)") as err:
        plan_placement(target, None, capacity=12 * GIB, ctx=4096, n_gpu_layers=-1)
    m = int(err.value.args[0].split("--n-cpu-moe ")[1].split(";")[0])
    assert (
        target.on_device(30, 4096, m) + RESERVE_BYTES
        <= 12 * GIB
        < target.on_device(30, 4096, m - 1) + RESERVE_BYTES
    )


@pytest.mark.parametrize("name", ["e2b.q4_k_m", "moe.f32", "dense31b.f32"])
@pytest.mark.parametrize("ctx", [40, 300])  # inside and past the fixtures' sliding window
def test_the_planned_kv_is_what_the_cache_allocates(name, ctx):
    from gemma_mtp.gguf.metadata import config_from_gguf
    from gemma_mtp.gguf.reader import open_gguf

    sizes, dtype_bytes = gguf_sizes(FIXTURES / f"{name}.gguf", dtype="bfloat16")
    config, _, _ = config_from_gguf(open_gguf(FIXTURES / f"{name}.gguf"))
    cache = KVCache(config, max_context=ctx, max_draft=16, dtype=torch.bfloat16)
    assert sum(sizes.kv_per_layer(ctx)) == sum(cache.memory_bytes().values())


@pytest.mark.parametrize("name", ["e2b.q4_k_m", "e2b.q8_0"])
def test_the_planned_weights_are_what_the_quantized_loader_holds(name):
    """On the CPU the loader keeps the same matrices as blocks (the native kernel's); its byte
    count is the plan's weights."""
    from native_required import native_or_skip

    from gemma_mtp.weights.gguf_loader import load_gguf_model

    native_or_skip()
    sizes, _ = gguf_sizes(FIXTURES / f"{name}.gguf", dtype="bfloat16")
    _, _, report = load_gguf_model(FIXTURES / f"{name}.gguf", dtype="bfloat16")
    assert sum(sizes.layers) + sizes.rest == report.n_bytes


def test_a_drafter_owns_no_kv():
    sizes, _ = gguf_sizes(FIXTURES / "e2b_assistant_centroids.f32.gguf", dtype="auto")
    assert not any(sizes.kv_per_layer(4096)) and sum(sizes.layers) > 0


@pytest.mark.parametrize(
    ("text", "n"),
    [("24G", 24 * GIB), ("24GiB", 24 * GIB), ("12000M", 12000 << 20), ("1.5G", 3 * GIB // 2), ("4096", 4096)],
)
def test_a_stated_device_capacity_is_read_from_the_environment(monkeypatch, text, n):
    assert parse_bytes(text) == n
    monkeypatch.setenv("GEMMA_MTP_DEVICE_MEMORY", text)
    assert device_capacity(torch.device("cuda")) == n


def test_a_malformed_stated_capacity_is_a_usage_error():
    with pytest.raises(PlacementError.__mro__[1], match="GEMMA_MTP_DEVICE_MEMORY='lots'"):
        parse_bytes("lots")
