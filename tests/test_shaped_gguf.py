"""scripts/make_shaped_gguf.py and tools/shapes.py + tools/shaped_gguf.py: files with the released
Gemma 4 shapes and random weights.

The full-size shapes are checked without writing them (tensor shapes from the meta-device model):
against the released config values cited in tools/shapes.py, llama.cpp's size detection, and the
metadata llama.cpp's converter wrote for the released 26B-A4B (ggml-vocab-gemma-4.gguf, when the
asset is cached). Small versions of every shape (fewer layers, a smaller vocabulary, fewer experts)
are written, read back, loaded by our engine and run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

import gemma_mtp
from gemma_mtp.config import FULL, SLIDING
from gemma_mtp.errors import UsageError
from gemma_mtp.gguf.reader import open_gguf, tensor_values
from gemma_mtp.gguf.writer import metadata_entries
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tools.quantize import resolve_file_type
from gemma_mtp.tools.shaped_gguf import SYNTHETIC_KEY, plan_tensors, write_shaped
from gemma_mtp.tools.shapes import SHAPES, VOCAB, shape_configs

ROOT = Path(__file__).resolve().parent.parent
T = GGMLQuantizationType
Q4_K_M = resolve_file_type("Q4_K_M", drafter=False)
Q8_0 = resolve_file_type("Q8_0", drafter=True)

# The released values (tools/shapes.py cites where each comes from).
RELEASED = {
    # shape: (layers, width, FF, heads, kv sliding, kv full, PLE, shared KV, window, experts)
    "e2b": (35, 1536, 6144, 8, 1, 1, 256, 20, 512, 0),
    "e4b": (42, 2560, 10240, 8, 2, 2, 256, 18, 512, 0),
    "26b-a4b": (30, 2816, 2112, 16, 8, 2, 0, 0, 1024, 128),
    "31b": (60, 5376, 21504, 32, 16, 4, 0, 0, 1024, 0),
}
# assistant: (width, FF, heads, backbone, centroid head, parameters as the model cards give them)
ASSISTANTS = {
    "e2b": (256, 2048, 4, 1536, True, 78e6),
    "e4b": (256, 2048, 4, 2560, True, 78.8e6),
    "26b-a4b": (1024, 8192, 16, 2816, False, 0.4e9),
    "31b": (1024, 8192, 32, 5376, False, 0.47e9),
}
# small versions: (layers, experts) written by the tests
SMALL = {"e2b": (10, None), "e4b": (12, None), "26b-a4b": (2, 8), "31b": (2, None)}
SMALL_VOCAB = 2048
POOL = 64


def test_layer_counts_are_llama_cpps_size_detection() -> None:
    # llama.cpp src/models/gemma4.cpp: 30 -> 26B_A4B, 35 -> E2B, 42 -> E4B, 60 -> 31B
    assert {n: s.target["num_hidden_layers"] for n, s in SHAPES.items()} == {
        "e2b": 35,
        "e4b": 42,
        "26b-a4b": 30,
        "31b": 60,
    }


@pytest.mark.parametrize("name", list(SHAPES))
def test_full_size_config_has_the_released_values(name) -> None:
    layers, width, ff, heads, kv_swa, kv_full, ple, shared, window, experts = RELEASED[name]
    text, assistant, _ = shape_configs(name)
    assert (text.num_layers, text.hidden_size, text.intermediate_size, text.num_heads) == (
        layers,
        width,
        ff,
        heads,
    )
    assert (text.vocab_size, text.ple_dim, text.sliding_window, text.num_experts) == (
        VOCAB,
        ple,
        window,
        experts,
    )
    assert text.ple_vocab_size == (VOCAB if ple else 0)
    assert text.final_logit_softcapping == 30.0
    for s in text.layers:
        assert (s.head_dim, s.kv_heads) == ((512, kv_full) if s.kind == FULL else (256, kv_swa))
    assert sum(not s.owns_kv for s in text.layers) == shared
    period = SHAPES[name].period
    assert [s.kind for s in text.layers] == ([SLIDING] * (period - 1) + [FULL]) * (layers // period)
    width_a, ff_a, heads_a, backbone, ordered, _ = ASSISTANTS[name]
    assert (assistant.text.hidden_size, assistant.text.intermediate_size) == (width_a, ff_a)
    assert (assistant.text.num_heads, assistant.backbone_hidden_size) == (heads_a, backbone)
    assert assistant.use_ordered_embeddings is ordered
    assert (assistant.num_centroids, assistant.centroid_top_k) == (2048, 32)
    assert [s.kind for s in assistant.text.layers] == [SLIDING, SLIDING, SLIDING, FULL]


def test_e2b_kv_sharing_and_double_wide_mlp() -> None:
    text, _, _ = shape_configs("e2b")
    shared = [s for s in text.layers if not s.owns_kv]
    assert [s.index for s in shared] == list(range(15, 35))
    # shared layers read the last owning layer of their kind: 13 (sliding) and 14 (full)
    assert {s.kv_source for s in shared if s.kind == SLIDING} == {13}
    assert {s.kv_source for s in shared if s.kind == FULL} == {14}
    assert all(s.double_wide_mlp is (not s.owns_kv) for s in text.layers)


def _planned(name: str):
    text, assistant, _ = shape_configs(name)
    target = {t.name: t for t in plan_tensors(text, Q4_K_M)}
    drafter = {
        t.name: t for t in plan_tensors(assistant, Q8_0, keep_centroids=assistant.use_ordered_embeddings)
    }
    return text, target, drafter


def test_e2b_tensors_at_full_size() -> None:
    _, target, drafter = _planned("e2b")
    assert target["per_layer_token_embd.weight"].shape == (VOCAB, 35 * 256)
    assert target["per_layer_model_proj.weight"].shape == (35 * 256, 1536)
    assert target["token_embd.weight"].shape == (VOCAB, 1536)
    assert target["blk.0.ffn_gate.weight"].shape == (6144, 1536)
    assert target["blk.15.ffn_gate.weight"].shape == (12288, 1536)  # double-wide on shared layers
    assert target["blk.4.attn_q.weight"].shape == (8 * 512, 1536)  # full layer: global head dim
    assert target["blk.0.attn_k.weight"].shape == (256, 1536)
    assert "blk.15.attn_k.weight" not in target and "blk.14.attn_k.weight" in target
    assert "output.weight" not in target  # tied head
    # llama-quantize's Q4_K_M mix: tied embeddings Q6_K, the PLE projection kept (BF16)
    assert target["token_embd.weight"].qtype == T.Q6_K
    assert target["per_layer_model_proj.weight"].qtype == T.BF16
    assert target["blk.0.ffn_up.weight"].qtype == T.Q4_K
    assert drafter["nextn.pre_projection.weight"].shape == (256, 2 * 1536)
    assert drafter["nextn.post_projection.weight"].shape == (1536, 256)
    assert drafter["masked_embd_centroids.weight"].shape == (2048, 256)
    assert drafter["masked_embd_ordering"].shape == (VOCAB,)


def test_26b_and_31b_tensors_at_full_size() -> None:
    _, moe, _ = _planned("26b-a4b")
    assert moe["blk.0.ffn_gate_up_exps.weight"].shape == (128, 2 * 704, 2816)
    assert moe["blk.0.ffn_down_exps.weight"].shape == (128, 2816, 704)
    assert moe["blk.0.ffn_gate_inp.weight"].shape == (128, 2816)
    assert moe["blk.0.ffn_gate_inp.weight"].qtype == T.F32
    assert moe["blk.0.ffn_gate.weight"].shape == (2112, 2816)  # the dense MLP beside the experts
    _, dense, _ = _planned("31b")
    assert dense["blk.5.attn_k.weight"].shape == (4 * 512, 5376)
    assert "blk.5.attn_v.weight" not in dense  # attention_k_eq_v on full layers
    assert dense["blk.0.attn_v.weight"].shape == (16 * 256, 5376)
    assert "per_layer_token_embd.weight" not in dense


@pytest.mark.parametrize("name", list(SHAPES))
def test_assistant_parameter_count_is_the_model_cards(name) -> None:
    text, assistant, _ = shape_configs(name)
    tensors = plan_tensors(assistant, Q8_0, keep_centroids=assistant.use_ordered_embeddings)
    count = sum(int(np.prod(t.shape)) for t in tensors if t.init != "rope_freqs")
    assert count == pytest.approx(ASSISTANTS[name][5], rel=0.06)


def test_26b_metadata_is_what_llama_cpp_converted_from_the_release() -> None:
    from gemma_mtp.assets import cache_dir

    vocab = cache_dir() / "llama.cpp-0.3.36" / "models" / "ggml-vocab-gemma-4.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is not cached (scripts/fetch_assets.py)")
    theirs = {k: f.value for k, f in open_gguf(vocab).fields.items() if k.startswith("gemma4.")}
    text, _, _ = shape_configs("26b-a4b")
    _, entries = metadata_entries(text)
    ours = {e.key: e.value for e in entries if e.key.startswith("gemma4.")}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_small_versions_are_refused_where_they_would_break_the_pattern() -> None:
    with pytest.raises(UsageError, match="multiple of 5"):
        shape_configs("e2b", layers=12)
    with pytest.raises(UsageError, match="at least 2"):
        shape_configs("31b", layers=1)
    with pytest.raises(UsageError, match="no mixture of experts"):
        shape_configs("31b", experts=8)


# ------------------------------------------------------------------------------------- written files


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name, (layers, experts) in SMALL.items():
        root = tmp_path_factory.mktemp(name)
        text, assistant, _ = shape_configs(name, layers=layers, vocab=SMALL_VOCAB, experts=experts)
        target = write_shaped(root / "target.gguf", text, "Q4_K_M", pool_blocks=POOL).path
        drafter = write_shaped(
            root / "assistant.gguf",
            assistant,
            "Q8_0",
            pool_blocks=POOL,
            keep_centroids=assistant.use_ordered_embeddings,
        ).path
        out[name] = (target, drafter)
    return out


@pytest.mark.parametrize("name", list(SMALL))
def test_small_file_metadata_and_shapes_read_back(small_files, name) -> None:
    target, drafter = small_files[name]
    layers, width, ff, heads, *_ = RELEASED[name]
    gf = open_gguf(target)
    assert gf.arch == "gemma4"
    assert gf.arch_value("block_count") == SMALL[name][0]
    assert (gf.arch_value("embedding_length"), gf.arch_value("attention.head_count")) == (width, heads)
    assert gf.arch_value("attention.key_length") == 512
    assert gf.arch_value("attention.key_length_swa") == 256
    assert "random weights" in gf.value(SYNTHETIC_KEY)
    assert gf.value("general.file_type") == int(Q4_K_M.file_type)
    assert open_gguf(drafter).arch == "gemma4-assistant"
    assert len(GGUFReader(str(target)).tensors) == len(gf.tensors)  # gguf-py reads the layout too


@pytest.mark.parametrize("name", list(SMALL))
def test_small_file_loads_and_runs_mtp(small_files, name) -> None:
    target, drafter = small_files[name]
    engine = gemma_mtp.load(str(target), draft=str(drafter), ctx_size=64)
    result = engine.generate(
        [2, 17, 300, 45],
        n_predict=3,
        sampling=SamplingParams(temperature=0),
        spec=SpecOptions(type="mtp", n_max=2),
    )
    assert len(result.token_ids) == 3
    assert all(0 <= t < SMALL_VOCAB for t in result.token_ids)
    assert result.speculative["drafted"] > 0


def test_values_have_the_stated_scale(tmp_path) -> None:
    _, assistant, _ = shape_configs("e2b", vocab=SMALL_VOCAB)
    for pool in (0, POOL):
        gf = open_gguf(write_shaped(tmp_path / f"a{pool}.gguf", assistant, "Q8_0", pool_blocks=pool).path)
        up = tensor_values(gf.tensors["blk.0.ffn_up.weight"])  # [2048, 256]: std 1/16
        assert float(up.std()) == pytest.approx(256**-0.5, rel=0.05)
        norm = tensor_values(gf.tensors["blk.0.attn_norm.weight"])
        assert float(norm.mean()) == pytest.approx(1.0, abs=0.02)


def test_files_are_deterministic(tmp_path) -> None:
    _, assistant, _ = shape_configs("e2b", vocab=SMALL_VOCAB)
    a = write_shaped(
        tmp_path / "a.gguf", assistant, "Q8_0", seed=3, pool_blocks=POOL, keep_centroids=True
    ).path
    b = write_shaped(
        tmp_path / "b.gguf", assistant, "Q8_0", seed=3, pool_blocks=POOL, keep_centroids=True
    ).path
    c = write_shaped(
        tmp_path / "c.gguf", assistant, "Q8_0", seed=4, pool_blocks=POOL, keep_centroids=True
    ).path
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_script_writes_the_pair_and_a_manifest(tmp_path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "make_shaped_gguf.py"),
        "--shape",
        "26b-a4b",
        "--layers",
        "2",
    ]
    cmd += ["--experts", "8", "--vocab", str(SMALL_VOCAB), "--pool-blocks", str(POOL), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    files = manifest["files"]
    assert set(files) == {"target", "assistant"}  # no centroid head on the 26B-A4B assistant
    for entry in files.values():
        assert (tmp_path / entry["file"]).stat().st_size == entry["bytes"]
    assert files["target"]["file"] == "gemma-4-26b-a4b.Q4_K_M.gguf"
    assert "%" in done.stderr  # progress
