"""`gemma-mtp quantize`: llama-quantize's per-tensor mixes, files that load back and track the
source's logits, the drafter low-bit policy, and one clear error per bad input."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from asset_helpers import gemma3_270m
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from test_gguf_helpers import target_logits
from test_gguf_tools_helpers import LEAKS, build_wide_gemma4, refilled, run_cli, with_metadata

from gemma_mtp.errors import ModelFormatError, UsageError
from gemma_mtp.gguf import open_gguf
from gemma_mtp.gguf.codecs import encode
from gemma_mtp.gguf.names import name_map
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.tools.quantize import FILE_TYPES, TensorSpec, plan_types, quantize_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")
T = GGMLQuantizationType
TOKENS = torch.tensor([[5, 17, 200, 3, 99, 150, 42, 7, 8, 250]])
MORE_BITS_OF_8 = {0, 3, 6, 7}  # llama.cpp's use_more_bits(i, 8)


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    return convert_hf_to_gguf(build_wide_gemma4(root / "hf"), root / "wide.f32.gguf")


@pytest.fixture(scope="module")
def quantized(wide_f32, tmp_path_factory):
    """file type -> QuantizeResult of the wide model, each made once."""
    root, cache = tmp_path_factory.mktemp("quantized"), {}

    def get(file_type: str):
        if file_type not in cache:
            cache[file_type] = quantize_gguf(wide_f32, root / f"{file_type}.gguf", file_type)
        return cache[file_type]

    return get


@pytest.fixture(scope="module")
def source_logits(wide_f32):
    model, _, _ = load_gguf_model(wide_f32, dtype="float32")
    return target_logits(model, TOKENS)


def _types(path) -> dict[str, T]:
    return {t.name: T(t.tensor_type) for t in gguf.GGUFReader(path).tensors}


def _expected_mix(base: T, fallback: T) -> dict[str, T]:
    """Q4_K_M / Q5_K_M on the wide model: width 256 fits 256-blocks, ffn_down rows (320) do not."""
    want = {"token_embd.weight": T.Q6_K}  # tied output head
    for i in range(8):
        more = i in MORE_BITS_OF_8
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            want[f"blk.{i}.{name}.weight"] = base
        want[f"blk.{i}.attn_v.weight"] = T.Q6_K if more else base
        want[f"blk.{i}.ffn_down.weight"] = T.Q8_0 if more else fallback  # Q6_K -> Q8_0
    return want


@pytest.mark.parametrize(
    ("file_type", "base", "fallback"),
    [("Q4_K_M", T.Q4_K, T.Q5_0), ("Q5_K_M", T.Q5_K, T.Q5_1)],
    ids=["Q4_K_M", "Q5_K_M"],
)
def test_k_quant_mix_gives_llama_quantizes_types_per_tensor(quantized, file_type, base, fallback):
    types = _types(quantized(file_type).path)
    want = _expected_mix(base, fallback)
    assert {name: types[name] for name in want} == want
    assert {t for name, t in types.items() if name not in want} == {T.F32}  # norms, scales, rope_freqs


def test_q4_k_m_plan_reproduces_llama_quantize_on_the_real_270m_file():
    path = gemma3_270m()
    gf = open_gguf(path)  # made by llama-quantize Q4_K_M: its types are llama.cpp's plan
    specs = [TensorSpec(t.name, t.shape, t.tensor_type) for t in gf.tensors.values()]
    plan, fallbacks = plan_types(specs, FILE_TYPES["Q4_K_M"], n_layers=18)
    assert plan == {t.name: t.tensor_type for t in gf.tensors.values()}
    assert Counter(plan.values())[T.Q6_K] == 9 and len(fallbacks) == 90  # rows of 640 are not 256-blocks


LLAMA_QUANTIZE = json.loads((Path(__file__).parent / "fixtures/ggml/llama_quantize.json").read_text())


@pytest.fixture(scope="module")
def deterministic_source(wide_f32, tmp_path_factory):
    """The wide model refilled with seeded values: what llama-quantize was run on once
    (scripts/make_ggml_fixtures.py --quantize-source)."""
    return refilled(wide_f32, tmp_path_factory.mktemp("refilled") / "wide.f32.gguf")


@pytest.mark.parametrize("file_type", list(LLAMA_QUANTIZE["file_types"]))
def test_quantize_is_byte_identical_to_llama_quantize(deterministic_source, tmp_path, file_type):
    out = open_gguf(quantize_gguf(deterministic_source, tmp_path / "out.gguf", file_type).path)
    got = {
        t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
        for t in out.tensors.values()
    }
    want = LLAMA_QUANTIZE["file_types"][file_type]
    assert {n: g[0] for n, g in got.items()} == {n: w[0] for n, w in want.items()}  # the mix
    assert [n for n in want if got[n][1] != want[n][1]] == []  # the bytes


# relative L2 error of the logits; the tiny random model amplifies weight error ~5x
MAX_LOGIT_ERROR = {
    "F16": 0.01,
    "BF16": 0.05,
    "Q8_0": 0.1,
    "Q6_K": 0.25,
    "Q5_K_M": 0.4,
    "Q4_K_M": 0.7,
    "Q4_0": 0.8,
}


@pytest.mark.parametrize("file_type", list(MAX_LOGIT_ERROR))
def test_quantized_file_loads_back_and_tracks_the_source_logits(quantized, source_logits, file_type):
    path = quantized(file_type).path
    model, _, _ = load_gguf_model(path, dtype="float32")
    logits = target_logits(model, TOKENS)
    error = (logits - source_logits).norm() / source_logits.norm()
    assert error < MAX_LOGIT_ERROR[file_type]
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == FILE_TYPES[file_type].file_type


def test_q4_k_m_file_holds_exactly_the_encoded_weights(wide_f32, quantized):
    """The loaded Q4_K_M model computes what the source does with each weight replaced by its
    dequantized encoding: mix, encoders, file and loader agree end to end."""
    result = quantized("Q4_K_M")
    expected, config, _ = load_gguf_model(wide_f32, dtype="float32")
    names = name_map(config)
    with torch.no_grad():
        for ours, param in expected.state_dict().items():
            qtype = result.types.get(names.get(ours, ""), T.F32)
            if qtype != T.F32:
                rows = param.numpy().reshape(-1, param.shape[-1])
                param.copy_(torch.from_numpy(dequantize(encode(rows, qtype), qtype)).reshape(param.shape))
    got, _, _ = load_gguf_model(result.path, dtype="float32")
    want = target_logits(expected, TOKENS)
    assert ((target_logits(got, TOKENS) - want).norm() / want.norm()) < 2e-3


def test_tensors_already_in_the_target_type_are_copied_byte_for_byte(quantized, tmp_path):
    q8 = quantized("Q8_0").path
    again = quantize_gguf(q8, tmp_path / "q8_again.gguf", "Q8_0").path
    a, b = open_gguf(q8), open_gguf(again)
    assert all(np.array_equal(a.tensors[n].data, b.tensors[n].data) for n in a.tensors)


def test_quantized_metadata_has_file_type_and_version_and_no_host_paths(wide_f32, tmp_path):
    leaky = with_metadata(wide_f32, tmp_path / "leaky.gguf", {**LEAKS, "quantize.imatrix.chunks_count": "10"})
    result = quantize_gguf(leaky, tmp_path / "out.gguf", "Q6_K")
    fields = open_gguf(result.path).fields
    assert fields["general.file_type"].value == 18 and fields["general.quantization_version"].value == 2
    assert not any(k.startswith("quantize.") or k == "general.notes" for k in fields)
    assert {key for key, _ in result.removed_keys} == {*LEAKS, "quantize.imatrix.chunks_count"}


def test_progress_reaches_every_weight(wide_f32, tmp_path):
    seen = []
    quantize_gguf(
        wide_f32, tmp_path / "out.gguf", "F16", progress=lambda done, total: seen.append((done, total))
    )
    total = sum(int(np.prod(t.shape)) for t in open_gguf(wide_f32).tensors.values())
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_requantizing_needs_allow_requantize(quantized, tmp_path):
    q8 = quantized("Q8_0").path
    with pytest.raises(UsageError, match="already Q8_0.*--allow-requantize"):
        quantize_gguf(q8, tmp_path / "q4.gguf", "Q4_0")
    path = quantize_gguf(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True).path
    load_gguf_model(path, dtype="float32")


# ------------------------------------------------------------------------------------- drafters


@pytest.fixture(scope="module")
def drafter_f32(reference_models, tmp_path_factory):
    reference = reference_models.assistant("e2b", ordered=True)
    return convert_hf_to_gguf(
        reference.path, tmp_path_factory.mktemp("drafter") / "drafter.gguf", keep_centroids=True
    )


@pytest.mark.parametrize("low_bit", ["Q2_K", "IQ2_XS", "Q3_K_M", "IQ1_S"])
def test_low_bit_types_for_drafters_give_the_reason_and_no_flag_that_cannot_help(
    drafter_f32, tmp_path, capsys, low_bit
):
    """No low-bit type is supported, so suggesting --allow-low-bit-drafter would only lead to a
    second error: the message says the type is not supported, which are, and the drafter advice."""
    assert run_cli(["quantize", str(drafter_f32), str(tmp_path / "out.gguf"), low_bit]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: quantize type '{low_bit}' is not supported: gemma-mtp quantizes to F32,")
    assert "Q4_K_M" in err and "acceptance" in err and err.count("\n") == 1
    assert "--allow-low-bit-drafter" not in err
    assert not (tmp_path / "out.gguf").exists()


def test_allowed_low_bit_drafter_type_says_which_types_are_supported(drafter_f32, tmp_path, capsys):
    argv = ["quantize", str(drafter_f32), str(tmp_path / "out.gguf"), "Q2_K", "--allow-low-bit-drafter"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"quantize type 'Q2_K' is not supported: gemma-mtp quantizes to {', '.join(FILE_TYPES)}" in err
    assert "lifts only the drafter policy; it adds no types" in err


def test_flag_is_suggested_only_for_a_low_bit_type_it_would_unlock(drafter_f32, tmp_path, monkeypatch):
    """Were a low-bit type supported, the refusal names the flag, and the flag makes the file."""
    monkeypatch.setitem(FILE_TYPES, "Q3_K_S", replace(FILE_TYPES["Q4_0"], name="Q3_K_S"))
    with pytest.raises(
        UsageError, match="refusing to quantize an MTP drafter to Q3_K_S.*--allow-low-bit-drafter"
    ):
        quantize_gguf(drafter_f32, tmp_path / "out.gguf", "Q3_K_S")
    assert quantize_gguf(
        drafter_f32, tmp_path / "out.gguf", "Q3_K_S", allow_low_bit_drafter=True
    ).path.exists()


def test_low_bit_type_for_a_target_is_simply_not_supported(wide_f32, tmp_path, capsys):
    assert run_cli(["quantize", str(wide_f32), str(tmp_path / "out.gguf"), "Q2_K"]) == 2
    err = capsys.readouterr().err
    assert "quantize type 'Q2_K' is not supported: gemma-mtp quantizes to" in err and "drafter" not in err


def test_drafter_quantizes_keeping_its_integer_ordering_table(drafter_f32, tmp_path):
    path = quantize_gguf(drafter_f32, tmp_path / "q4.gguf", "Q4_K_M").path
    src, out = open_gguf(drafter_f32), open_gguf(path)
    ordering = "masked_embd_ordering"
    assert out.tensors[ordering].tensor_type == T.I32
    assert np.array_equal(src.tensors[ordering].data, out.tensors[ordering].data)
    _, config, _ = load_gguf_model(path, dtype="float32")
    assert config.is_assistant and config.use_ordered_embeddings


# ------------------------------------------------------------------------------------- bad inputs


def test_cli_quantize_writes_the_file_and_a_summary(wide_f32, tmp_path, capsys):
    assert run_cli(["quantize", str(wide_f32), str(tmp_path / "out.gguf"), "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "tensor types: 58 F32, 57 Q8_0" in out and f"wrote {tmp_path / 'out.gguf'} (Q8_0)" in out


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (lambda src, tmp: [str(src), str(src), "Q8_0"], 2, "OUT is the input file"),
        (
            lambda src, tmp: [str(src), str(tmp / "o.gguf"), "Q9_9"],
            2,
            "quantize type 'Q9_9' is not supported",
        ),
        (
            lambda src, tmp: [str(tmp / "missing.gguf"), str(tmp / "o.gguf"), "Q8_0"],
            1,
            "missing.gguf: no such file",
        ),
    ],
    ids=["out-is-in", "unknown-type", "missing-file"],
)
def test_bad_quantize_arguments_give_one_clear_error(wide_f32, tmp_path, capsys, make_args, code, message):
    assert run_cli(["quantize", *make_args(wide_f32, tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_truncated_input_gives_one_clear_error(wide_f32, tmp_path, capsys):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(wide_f32.read_bytes()[:-1000])
    assert run_cli(["quantize", str(broken), str(tmp_path / "o.gguf"), "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "o.gguf").exists()


def test_out_equal_in_is_refused_in_the_library(wide_f32):
    with pytest.raises(UsageError):
        quantize_gguf(wide_f32, wide_f32, "Q8_0")
    with pytest.raises(ModelFormatError):
        quantize_gguf(wide_f32.with_name("nope.gguf"), wide_f32.with_name("o.gguf"), "Q8_0")


def test_missing_output_folder_is_refused_naming_it(wide_f32, tmp_path, capsys):
    """llama-quantize fails on a missing output folder; we used to create it silently."""
    missing = tmp_path / "no" / "such"
    assert run_cli(["quantize", str(wide_f32), str(missing / "o.gguf"), "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert f"the output folder {missing} does not exist" in err and "mkdir -p" in err
    assert err.count("\n") == 1 and not (tmp_path / "no").exists()


def test_quantize_of_a_directory_says_it_takes_a_gguf_file(tmp_path, capsys):
    assert run_cli(["quantize", str(tmp_path), str(tmp_path / "o.gguf"), "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a directory; gemma-mtp quantize takes a GGUF file" in err
