"""Our numpy encoders are ggml's quantizers, bit for bit: against ggml's own bytes (tests/fixtures/ggml,
made once by scripts/make_ggml_fixtures.py), without and with an importance matrix, and against
gguf.quants."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from gemma_mtp.errors import UsageError
from gemma_mtp.gguf.codecs import ENCODERS, WEIGHTED, encode

T = GGMLQuantizationType
FIXTURES = Path(__file__).parent / "fixtures" / "ggml"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
GGML_TYPES = [T[name] for name in MANIFEST["requires_imatrix"]]
WEIGHTED_TYPES = [T[name] for name in MANIFEST["weighted_types"]]
GGUF_PY_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]  # what gguf.quants can quantize


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "inputs.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def importance() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "importance.npz") as data:
        return {name: data[name] for name in data.files}


def test_fixture_files_match_their_manifest():
    for name, digest in MANIFEST["sha256"].items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


def test_fixtures_cover_every_k_quant_we_write():
    assert {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K} <= set(GGML_TYPES)
    assert not any(MANIFEST["requires_imatrix"].values())  # ggml makes all of them without one


def test_weighted_fixtures_cover_every_type_that_reads_weights():
    assert set(WEIGHTED_TYPES) == set(WEIGHTED)


@pytest.mark.parametrize("qtype", GGML_TYPES, ids=lambda t: t.name)
def test_encoder_is_bit_exact_with_ggml_reference_quantizer(inputs, qtype):
    with np.load(FIXTURES / f"{qtype.name}.npz") as expected:
        for case, values in inputs.items():
            got = encode(values, qtype)
            assert got.dtype == np.uint8 and got.shape == expected[case].shape, case
            mismatched = np.flatnonzero(got != expected[case])
            assert mismatched.size == 0, f"{qtype.name} {case}: {mismatched.size} bytes differ"


@pytest.mark.parametrize("qtype", WEIGHTED_TYPES, ids=lambda t: t.name)
def test_weighted_encoder_is_bit_exact_with_ggml_given_quant_weights(inputs, importance, qtype):
    with np.load(FIXTURES / f"{qtype.name}.imatrix.npz") as expected:
        for case, values in inputs.items():
            got = encode(values, qtype, importance[case])
            mismatched = np.flatnonzero(got != expected[case])
            assert mismatched.size == 0, f"{qtype.name} {case}: {mismatched.size} bytes differ"


@pytest.mark.parametrize("qtype", WEIGHTED_TYPES, ids=lambda t: t.name)
def test_importance_changes_the_encoding(inputs, importance, qtype):
    values = inputs["normal"]
    assert not np.array_equal(encode(values, qtype, importance["normal"]), encode(values, qtype))


def test_types_that_ignore_weights_encode_as_without(inputs, importance):
    for qtype in (T.Q8_0, T.F16, T.BF16):
        values = inputs["normal"]
        assert np.array_equal(encode(values, qtype, importance["normal"]), encode(values, qtype))


def test_importance_per_expert_weights_each_expert_with_its_own_row(inputs, importance):
    values = inputs["normal"][:8].reshape(2, 4, 512)
    imp = np.stack([importance["normal"], importance["weights"]])  # [n_expert, n_per_row]
    got = encode(values, T.Q4_K, imp[:, None, :])
    for e in range(2):
        assert np.array_equal(got[e], encode(values[e], T.Q4_K, imp[e]))


def test_importance_of_the_wrong_length_is_refused():
    with pytest.raises(
        UsageError, match="importance of shape \\[256\\] does not match values of shape \\[2, 512\\]"
    ):
        encode(np.zeros((2, 512), dtype=np.float32), T.Q4_K, np.ones(256, np.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # gguf.quants on the "huge" case
@pytest.mark.parametrize("qtype", GGUF_PY_TYPES, ids=lambda t: t.name)
def test_encoder_is_bit_exact_with_gguf_quants(inputs, qtype):
    for case, values in inputs.items():
        if case == "sparse":
            continue  # signed zeros: see the next test
        want = quantize(values, qtype).view(np.uint8).reshape(values.shape[0], -1)
        assert np.array_equal(encode(values, qtype), want), case


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_0], ids=lambda t: t.name)
def test_all_zero_block_scale_has_ggmls_sign_of_zero(qtype):
    # ggml's running max starts at +0.0f and never moves, so d = +0/-8 = -0.0; gguf.quants takes
    # the first element (-0.0 here), giving +0.0. Same values, different bytes: ggml's are the truth.
    values = np.full((1, 32), -0.0, dtype=np.float32)
    ours, theirs = encode(values, qtype), quantize(values, qtype).view(np.uint8)
    assert ours[0, :2].tobytes() == b"\x00\x80" and theirs[0, :2].tobytes() == b"\x00\x00"
    assert np.array_equal(dequantize(ours, qtype), dequantize(theirs, qtype))


# RMS error on standard normal values, about half a quantization step of each type
MAX_RMS = {T.F16: 1e-3, T.BF16: 5e-3, T.Q8_0: 0.01, T.Q6_K: 0.03, T.Q5_K: 0.05, T.Q5_0: 0.06,
           T.Q5_1: 0.06, T.Q4_K: 0.1, T.Q4_0: 0.12, T.Q4_1: 0.12, T.Q3_K: 0.25, T.Q2_K: 0.45}  # fmt: skip


@pytest.mark.parametrize("qtype", list(ENCODERS), ids=lambda t: t.name)
def test_encoded_values_dequantize_close_to_the_input(qtype):
    values = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    decoded = dequantize(encode(values, qtype), qtype).reshape(values.shape)
    assert float(np.sqrt(np.mean((decoded - values) ** 2))) < MAX_RMS[qtype]


def test_encoder_keeps_leading_dimensions():
    values = np.random.default_rng(1).standard_normal((2, 3, 256)).astype(np.float32)
    assert encode(values, T.Q6_K).shape == (2, 3, GGML_QUANT_SIZES[T.Q6_K][1])


def test_rows_that_do_not_fit_the_blocks_are_refused():
    with pytest.raises(UsageError, match="rows of 640 values do not fit Q4_K blocks of 256"):
        encode(np.zeros((2, 640), dtype=np.float32), T.Q4_K)


def test_type_without_an_encoder_is_refused():
    with pytest.raises(UsageError, match="no encoder for IQ2_XXS"):
        encode(np.zeros((1, 256), dtype=np.float32), T.IQ2_XXS)
