"""`gemma-mtp quantize`: llama-quantize's per-tensor mixes, files that load back and track the
source's logits, the drafter low-bit policy, and one clear error per bad input."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
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


@pytest.mark.parametrize("low_bit", ["Q2_K", "Q3_K_M", "Q3_K_S", "Q3_K_L"])
def test_low_bit_k_quant_for_a_drafter_is_refused_with_the_reason_and_the_flag(
    drafter_f32, tmp_path, capsys, low_bit
):
    assert run_cli(["quantize", str(drafter_f32), str(tmp_path / "out.gguf"), low_bit]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: refusing to quantize an MTP drafter to {low_bit}:")
    assert "acceptance" in err and "bench_drafter_quant.py" in err and "--allow-low-bit-drafter" in err
    assert err.count("\n") == 1 and not (tmp_path / "out.gguf").exists()


def test_allow_low_bit_drafter_makes_the_low_bit_drafter(drafter_f32, tmp_path):
    result = quantize_gguf(drafter_f32, tmp_path / "out.gguf", "Q3_K_M", allow_low_bit_drafter=True)
    assert result.path.exists() and result.file_type.name == "Q3_K_M"


@pytest.mark.parametrize("iq", ["IQ2_XS", "IQ1_S", "IQ4_XS", "IQ3_M"])
def test_iq_types_are_refused_as_read_but_not_written_naming_llama_quantize(wide_f32, tmp_path, capsys, iq):
    assert run_cli(["quantize", str(wide_f32), str(tmp_path / "out.gguf"), iq]) == 2
    err = capsys.readouterr().err
    assert f"gemma-mtp reads {iq} files but has no encoder" in err and "llama-quantize" in err
    assert ("needs an importance matrix" in err) == (iq in ("IQ2_XS", "IQ1_S"))


def test_iq_type_for_a_drafter_also_gives_the_drafter_advice(drafter_f32, tmp_path, capsys):
    assert run_cli(["quantize", str(drafter_f32), str(tmp_path / "out.gguf"), "IQ2_XS"]) == 2
    err = capsys.readouterr().err
    assert "has no encoder" in err and "for an MTP drafter" in err and err.count("\n") == 1


def test_q2_k_s_needs_an_imatrix_and_says_why(wide_f32, tmp_path, capsys):
    assert run_cli(["quantize", str(wide_f32), str(tmp_path / "out.gguf"), "Q2_K_S"]) == 2
    err = capsys.readouterr().err
    assert "Q2_K_S needs an importance matrix: pass --imatrix FILE" in err and "label" in err


def test_q2_k_s_with_an_imatrix_missing_a_q2_k_tensor_is_refused_as_llama_quantize_does(
    deterministic_source, tmp_path
):
    assert LLAMA_QUANTIZE["imatrix_refused"] == ["Q2_K_S"]  # llama-quantize exited 1 on the same input
    with pytest.raises(
        UsageError, match="no imatrix entry for tensor blk.3.attn_q.weight, which Q2_K_S makes Q2_K"
    ):
        quantize_gguf(deterministic_source, tmp_path / "out.gguf", "Q2_K_S", imatrix=IMATRIX)


def test_unknown_type_lists_the_supported_ones(wide_f32, tmp_path, capsys):
    assert run_cli(["quantize", str(wide_f32), str(tmp_path / "out.gguf"), "Q7_K"]) == 2
    err = capsys.readouterr().err
    assert f"quantize type 'Q7_K' is not supported: gemma-mtp quantizes to {', '.join(FILE_TYPES)}" in err


def test_llama_quantize_aliases_name_the_m_mixes(wide_f32, tmp_path):
    assert quantize_gguf(wide_f32, tmp_path / "out.gguf", "Q4_K").file_type.name == "Q4_K_M"


IMATRIX = Path(__file__).parent / "fixtures/ggml" / LLAMA_QUANTIZE["imatrix"]["file"]


@pytest.mark.parametrize("file_type", list(LLAMA_QUANTIZE["imatrix_file_types"]))
def test_quantize_with_imatrix_is_byte_identical_to_llama_quantize(deterministic_source, tmp_path, file_type):
    result = quantize_gguf(deterministic_source, tmp_path / "out.gguf", file_type, imatrix=IMATRIX)
    out = open_gguf(result.path)
    got = {
        t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
        for t in out.tensors.values()
    }
    want = LLAMA_QUANTIZE["imatrix_file_types"][file_type]
    assert {n: g[0] for n, g in got.items()} == {n: w[0] for n, w in want.items()}
    assert [n for n in want if got[n][1] != want[n][1]] == []
    assert result.without_imatrix == [LLAMA_QUANTIZE["imatrix"]["left_out"]]


def test_imatrix_changes_the_bytes_and_records_its_counts_not_its_path(deterministic_source, tmp_path):
    plain = open_gguf(quantize_gguf(deterministic_source, tmp_path / "a.gguf", "Q4_K_M").path)
    weighted = open_gguf(
        quantize_gguf(deterministic_source, tmp_path / "b.gguf", "Q4_K_M", imatrix=IMATRIX).path
    )
    name = "blk.0.attn_q.weight"
    assert weighted.tensors[name].data.tobytes() != plain.tensors[name].data.tobytes()
    assert weighted.value("quantize.imatrix.chunks_count") == 4
    assert weighted.value("quantize.imatrix.entries_count") > 0
    assert (
        weighted.value("quantize.imatrix.file") is None and weighted.value("quantize.imatrix.dataset") is None
    )


def test_imatrix_of_another_model_is_refused_naming_the_entry(wide_f32, tmp_path):
    from gemma_mtp.gguf.imatrix import ImatrixData, write_imatrix

    bad = ImatrixData(
        entries={"blk.0.attn_q.weight": (np.ones((1, 128), np.float32), np.ones(1, np.float32))}
    )
    write_imatrix(tmp_path / "bad.imatrix", bad)
    with pytest.raises(
        ModelFormatError, match="imatrix entry blk.0.attn_q.weight has 128 values but the tensor needs 256"
    ):
        quantize_gguf(wide_f32, tmp_path / "out.gguf", "Q4_K_M", imatrix=tmp_path / "bad.imatrix")


def test_cli_imatrix_says_how_many_entries_and_which_tensor_had_none(deterministic_source, tmp_path, capsys):
    argv = [
        "quantize",
        str(deterministic_source),
        str(tmp_path / "out.gguf"),
        "Q4_K_M",
        "--imatrix",
        str(IMATRIX),
    ]
    assert run_cli(argv) == 0
    captured = capsys.readouterr()
    assert f"entries from {IMATRIX}" in captured.out
    assert "notice: no imatrix entry for blk.3.attn_q.weight" in captured.err


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
