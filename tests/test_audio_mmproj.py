"""The Gemma 4 audio tower in llama.cpp's mmproj GGUF: llama.cpp's converter output (fixture, both
towers) loads with audio soft tokens within 1e-4 of transformers; `convert --mmproj` writes what the
converter writes at every --outtype; loading is strict; a GGUF target with that mmproj answers an
audio prompt as the HF checkpoint does, with MTP drafting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.engine.media import load_media_encoder
from gemma_mtp.errors import GemmaMTPError, ModelFormatError
from gemma_mtp.gguf.writer import Entry, write_gguf
from gemma_mtp.media.audio import audio_features
from gemma_mtp.media.image import ImageOptions, preprocess_image
from gemma_mtp.media.prompt import MediaTokens
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.weights.mmproj import load_mmproj_vision
from gemma_mtp.weights.mmproj_audio import check_writable, load_mmproj_audio

pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp_mmproj"
FIXTURE = FIXTURES / "e2b_vision_audio.mmproj.f32.gguf"
AUDIO = {"subsampling_conv_channels": [128, 4]}  # as scripts/make_mmproj_fixture.py builds it
GREEDY = SamplingParams(temperature=0)
PROMPT = [2, 17, 40, mref.AUDIO_TOKEN, 23, 5, 77, 5, 23, 61]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The checkpoint the fixture was converted from (same seed and overrides)."""
    return aref.build_e2b_audio(
        tmp_path_factory.mktemp("audio_mmproj") / "e2b_vision_audio", vision=True, audio=AUDIO
    )


@pytest.fixture(scope="module")
def clips():
    return [aref.test_clip(0.77, seed=1), aref.test_clip(2.3, seed=2)]


@torch.no_grad()
def test_llama_cpp_mmproj_audio_soft_tokens_match_transformers(checkpoint, clips):
    model = load_mmproj_audio(FIXTURE)
    assert model.config.subsampling_conv_channels == (128, 4) and model.config.use_clipped_linears
    for i, clip in enumerate(clips):
        (theirs,) = aref.hf_audio_features(checkpoint.model, [clip])
        f = audio_features(clip)
        (ours,) = model(torch.from_numpy(f.features)[None], torch.from_numpy(f.mask)[None])
        ref.assert_close(ours, theirs, f"clip {i} through llama.cpp's mmproj")


@torch.no_grad()
def test_the_vision_tower_of_a_two_tower_mmproj_matches_transformers(checkpoint):
    image = mref.test_image(37, 23, seed=1)
    (theirs,) = mref.hf_image_features(checkpoint.model, [image])
    options = ImageOptions(
        patch_size=mref.PATCH, pooling_kernel_size=mref.POOL, max_soft_tokens=mref.SOFT_TOKENS
    )
    p = preprocess_image(image, options)
    (ours,) = load_mmproj_vision(FIXTURE)(
        torch.from_numpy(p.patches)[None], torch.from_numpy(p.positions)[None]
    )
    ref.assert_close(ours, theirs, "image through a two-tower mmproj")


def _fields(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(aref.SKIPPED_KEYS)}


def test_convert_mmproj_writes_both_towers_as_llama_cpp_does(checkpoint, tmp_path):
    out = tmp_path / "ours.mmproj.gguf"
    assert main(["convert", str(checkpoint.path), str(out), "--mmproj"]) == 0
    theirs, ours = GGUFReader(FIXTURE), GGUFReader(out)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.tensor_type, list(a.shape)) == (b.tensor_type, list(b.shape)), a.name
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data), err_msg=a.name)
    assert _fields(ours) == _fields(theirs)
    assert _fields(ours)["clip.audio.projector_type"] == "gemma4a"


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_convert_mmproj_at_other_outtypes_writes_what_llama_cpp_writes(checkpoint, tmp_path, outtype):
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    out = tmp_path / f"ours.{outtype}.gguf"
    assert main(["convert", str(checkpoint.path), str(out), "--mmproj", "--outtype", outtype]) == 0
    assert aref.gguf_digest(out) == manifest[FIXTURE.name]["digests_by_outtype"][outtype]


def test_a_tower_llama_cpp_cannot_describe_is_not_written(checkpoint):
    from gemma_mtp.weights.towers import read_audio_config

    config = dataclasses.replace(read_audio_config(checkpoint.path), chunk_size=8)
    with pytest.raises(ModelFormatError, match="audio chunk_size 8 is not 12"):
        check_writable(config, str(checkpoint.path))


# -- strict loading ---------------------------------------------------------------------------


def rewrite(tmp_path: Path, *, drop=(), extra=(), keys=None) -> Path:
    """A copy of the fixture without the tensors `drop`, with (name, values) `extra`, keys changed."""
    reader = GGUFReader(FIXTURE)
    entries = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = (keys or {}).get(key, field.contents())
        sub = field.types[1] if len(field.types) > 1 else None
        entries.append(Entry(key, value, field.types[0], sub))
    tensors = [(t.name, np.asarray(t.data), t.tensor_type) for t in reader.tensors if t.name not in drop]
    tensors += [(name, values, GGMLQuantizationType.F32) for name, values in extra]
    return write_gguf(tmp_path / "edited.mmproj.gguf", "clip", entries, tensors)


def test_a_missing_audio_tensor_is_named(tmp_path):
    path = rewrite(tmp_path, drop={"a.blk.1.attn_k_rel.weight"})
    with pytest.raises(ModelFormatError, match=r"missing tensor a\.blk\.1\.attn_k_rel\.weight"):
        load_mmproj_audio(path)


def test_an_unexpected_audio_tensor_is_named(tmp_path):
    path = rewrite(tmp_path, extra=[("a.blk.0.per_dim_k_scale.weight", np.ones(8, np.float32))])
    with pytest.raises(ModelFormatError, match=r"unexpected tensor a\.blk\.0\.per_dim_k_scale\.weight"):
        load_mmproj_audio(path)
    load_mmproj_vision(path)  # the vision tower does not read audio tensors


def test_the_unified_models_audio_embedder_is_refused_by_name(tmp_path):
    path = rewrite(tmp_path, keys={"clip.audio.projector_type": "gemma4ua"})
    with pytest.raises(ModelFormatError, match="gemma4ua.*12B unified"):
        load_mmproj_audio(path)


def test_a_vision_only_mmproj_has_no_audio(tmp_path):
    vision_only = FIXTURES / "e2b_vision.mmproj.f32.gguf"
    with pytest.raises(ModelFormatError, match="not an audio mmproj"):
        load_mmproj_audio(vision_only)
    encoder = load_media_encoder(
        "t.gguf", dtype="float32", device="cpu", mmproj=str(vision_only), tokens=_tokens()
    )
    with pytest.raises(GemmaMTPError, match="has no audio tower.*--mmproj"):
        encoder.require(audio=True)


# -- end to end -------------------------------------------------------------------------------


def _tokens() -> MediaTokens:
    return MediaTokens(
        image=mref.IMAGE_TOKEN, boi=mref.BOI, eoi=mref.EOI, audio=mref.AUDIO_TOKEN, boa=mref.BOA, eoa=mref.EOA
    )


def test_gguf_target_with_mmproj_answers_audio_as_the_hf_checkpoint(checkpoint, clips, tmp_path):
    target = tmp_path / "target.gguf"
    assert main(["convert", str(checkpoint.path), str(target)]) == 0
    assistant = ref.build_assistant(tmp_path / "assistant", checkpoint, use_ordered_embeddings=True)
    clip = clips[0]
    hf = gemma_mtp.load(checkpoint.path, dtype="float32", device="cpu", ctx_size=256)
    expected = hf.generate(PROMPT, audio=[clip], n_predict=10, sampling=GREEDY, spec=SpecOptions()).token_ids
    engine = gemma_mtp.load(target, assistant.path, dtype="float32", device="cpu", ctx_size=256)
    engine.mmproj = str(FIXTURE)
    # the tiny vocabulary has no released media ids: give the encoder this checkpoint's
    engine.media = load_media_encoder(
        str(target), dtype="float32", device="cpu", mmproj=str(FIXTURE), tokens=_tokens()
    )
    plain = engine.generate(PROMPT, audio=[clip], n_predict=10, sampling=GREEDY, spec=SpecOptions())
    mtp = engine.generate(
        PROMPT, audio=[clip], n_predict=10, sampling=GREEDY, spec=SpecOptions(type="mtp", n_max=3)
    )
    assert plain.token_ids == expected
    assert mtp.token_ids == expected and mtp.speculative["drafted"] > 0


def test_mmproj_audio_for_a_target_without_audio_tokens_is_a_clear_error():
    tokens = MediaTokens(image=mref.IMAGE_TOKEN, boi=mref.BOI, eoi=mref.EOI)  # released audio ids
    with pytest.raises(GemmaMTPError, match="has no Gemma 4 audio tokens"):
        load_media_encoder(
            "t.gguf", dtype="float32", device="cpu", mmproj=str(FIXTURE), vocab_size=ref.VOCAB, tokens=tokens
        )
