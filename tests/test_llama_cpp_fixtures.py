"""gemma-mtp against files llama.cpp wrote (tests/fixtures/llama_cpp/, made by
scripts/make_llama_cpp_fixtures.py from the tiny checkpoints of hf_reference.py; CI needs no llama.cpp).

Each fixture loads; F32 targets give transformers' logits within 1e-4 (the checkpoint is rebuilt
from its seed and checked to be the one llama.cpp converted); MTP with llama.cpp-written assistants
is lossless; our converter writes what llama.cpp's converter writes, except `OURS_ONLY`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import hf_reference as ref
import numpy as np
import pytest
from fixture_tokenizer import write_tokenizer
from test_gguf_helpers import realigned, target_logits

import gemma_mtp
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
FILES = sorted(MANIFEST["files"])
TARGETS = [t for t in MANIFEST["checkpoints"]["builders"] if f"{t}.f32.gguf" in MANIFEST["files"]]
ASSISTANTS = [
    (t, bool(o)) for t, o in MANIFEST["checkpoints"]["assistants"] if f"{t}.f32.gguf" in MANIFEST["files"]
]
GREEDY = SamplingParams(temperature=0.0)
PROMPTS = [[2, 17, 45, 99, 120, 7], [2, 200, 31, 31, 64]]
# Keys our converter writes that llama.cpp's does not (the diff test allows exactly these):
# a centroid drafter whose head mainline output leaves out says it had one (our loader's notice and
# `convert --centroids-from` read them; llama.cpp ignores unknown keys).
OURS_ONLY = {
    "gemma4-assistant.centroid_count",
    "gemma4-assistant.centroid_top_k",
    "gemma4-assistant.use_ordered_embeddings",
}


def _name(target: str, ordered: bool | None = None) -> str:
    return target if ordered is None else f"{target}_assistant_{'centroids' if ordered else 'dense'}"


def _reference(reference_models, target: str, ordered: bool | None = None):
    if ordered is None:
        return reference_models.target(target)
    return reference_models.assistant(target, ordered=ordered)


def test_fixtures_are_small_and_match_the_manifest():
    total = 0
    for name in FILES:
        data = (FIXTURES / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == MANIFEST["files"][name]["sha256"], name
        total += len(data)
    assert total < 5 * 2**20


@pytest.mark.parametrize("name", FILES)
def test_every_llama_cpp_file_loads(name):
    _, config, _ = load_gguf_model(FIXTURES / name, dtype="float32")
    assert config.vocab_size == ref.VOCAB


@pytest.mark.parametrize("target", TARGETS)
def test_rebuilt_checkpoint_is_the_one_llama_cpp_converted(reference_models, target):
    reader = gguf.GGUFReader(FIXTURES / f"{target}.f32.gguf")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    ours = reference_models.target(target).model.get_input_embeddings().weight.detach().numpy()
    assert np.array_equal(np.asarray(embd.data).reshape(ours.shape), ours), (
        "the tiny checkpoint rebuilt from its seed differs from the fixture's: torch or transformers "
        "changed their random streams; run scripts/make_llama_cpp_fixtures.py again"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_llama_cpp_f32_target_gives_transformers_logits(reference_models, target):
    reference = reference_models.target(target)
    model, _, _ = load_gguf_model(FIXTURES / f"{target}.f32.gguf", dtype="float32")
    tokens = ref.random_tokens(1, 12, seed=3)
    expected = ref.hf_logits(reference.model, tokens)
    ref.assert_close(target_logits(realigned(model), tokens), expected, f"{target} (llama.cpp's file)")


@pytest.mark.parametrize(("target", "ordered"), ASSISTANTS)
def test_mtp_with_a_llama_cpp_assistant_equals_plain_greedy(target, ordered):
    engine = gemma_mtp.load(
        FIXTURES / f"{target}.f32.gguf",
        FIXTURES / f"{_name(target, ordered)}.f32.gguf",
        dtype="float32",
        device="cpu",
        ctx_size=64,
    )
    for prompt in PROMPTS:
        plain = engine.generate(prompt, n_predict=16, sampling=GREEDY, spec=SpecOptions())
        spec = engine.generate(prompt, n_predict=16, sampling=GREEDY, spec=SpecOptions(type="mtp", n_max=3))
        assert spec.token_ids == plain.token_ids
        assert spec.speculative["rounds"] > 0


def test_a_llama_cpp_centroid_assistant_says_it_drafts_with_the_full_head():
    _, config, report = load_gguf_model(FIXTURES / "e2b_assistant_centroids.f32.gguf", dtype="float32")
    assert not config.use_ordered_embeddings
    assert any("dense drafter head" in n and "--centroids-from" in n for n in report.notices)


def _contents(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {n: f.contents() for n, f in reader.fields.items() if not n.startswith("GGUF.")}
    tensors = {t.name: ([int(d) for d in t.shape], t.tensor_type.name) for t in reader.tensors}
    return fields, tensors


@pytest.mark.parametrize(("target", "ordered"), [(t, None) for t in TARGETS] + ASSISTANTS)
def test_our_convert_writes_what_llama_cpps_converter_writes(reference_models, tmp_path, target, ordered):
    reference = _reference(reference_models, target, ordered)
    src = ref.copy_checkpoint(reference.path, tmp_path / reference.path.name)
    write_tokenizer(src, ref.VOCAB)  # the one the fixture's checkpoint carried
    ours_fields, ours_tensors = _contents(convert_hf_to_gguf(src, tmp_path / "ours.gguf"))
    theirs_fields, theirs_tensors = _contents(FIXTURES / f"{_name(target, ordered)}.f32.gguf")
    assert ours_tensors == theirs_tensors
    assert set(ours_fields) - set(theirs_fields) <= OURS_ONLY
    assert set(theirs_fields) - set(ours_fields) == set()
    different = [k for k in theirs_fields if ours_fields[k] != theirs_fields[k]]
    assert different == []


def test_ours_only_keys_are_written_only_for_a_centroid_head_left_out(reference_models, tmp_path):
    reference = reference_models.assistant("e2b", ordered=False)
    fields, _ = _contents(convert_hf_to_gguf(reference.path, tmp_path / "dense.gguf"))
    assert not OURS_ONLY & set(fields)


@pytest.mark.parametrize("target", TARGETS)
def test_our_greedy_on_llama_cpps_file_equals_transformers_greedy(reference_models, target):
    engine = gemma_mtp.load(FIXTURES / f"{target}.f32.gguf", dtype="float32", device="cpu", ctx_size=64)
    for prompt in PROMPTS:
        ours = engine.generate(prompt, n_predict=8, sampling=GREEDY, spec=SpecOptions()).token_ids
        theirs = ref.hf_greedy(reference_models.target(target).model, prompt, 8)
        assert ours == theirs[: len(ours)] and len(ours) > 0
