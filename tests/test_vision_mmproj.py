"""llama.cpp's mmproj GGUF for the Gemma 4 vision tower: llama.cpp's converter output (fixture) loads
with soft tokens within 1e-4 of transformers; `convert --mmproj` writes the same file; a GGUF target
with `mmproj` answers an image prompt as the HF checkpoint does."""

from __future__ import annotations

from pathlib import Path

import hf_reference as ref
import media_reference as mref
import numpy as np
import pytest
import torch
from gguf import GGUFReader

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.engine.media import load_media_encoder
from gemma_mtp.errors import GemmaMTPError, ModelFormatError
from gemma_mtp.media.image import ImageOptions, preprocess_image
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.weights.mmproj import load_mmproj_vision

pytest.importorskip("transformers")

FIXTURE = Path(__file__).parent / "fixtures" / "llama_cpp_mmproj" / "e2b_vision.mmproj.f32.gguf"
OPTIONS = ImageOptions(patch_size=mref.PATCH, pooling_kernel_size=mref.POOL, max_soft_tokens=mref.SOFT_TOKENS)
PROMPT = [2, 17, 40, mref.IMAGE_TOKEN, 23, 5, 77, 61]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The checkpoint the fixture was converted from (scripts/make_mmproj_fixture.py, same seed)."""
    return mref.build_e2b_vision(tmp_path_factory.mktemp("mmproj") / "e2b_vision")


@torch.no_grad()
def test_llama_cpp_mmproj_soft_tokens_match_transformers(checkpoint):
    images = [mref.test_image(37, 23, seed=1), mref.test_image(90, 130, seed=2)]
    expected = mref.hf_image_features(checkpoint.model, images)
    model = load_mmproj_vision(FIXTURE)
    assert model.config.kv_heads == 1 and model.config.use_clipped_linears and model.config.standardize
    for i, (image, theirs) in enumerate(zip(images, expected, strict=True)):
        p = preprocess_image(image, OPTIONS)
        (ours,) = model(torch.from_numpy(p.patches)[None], torch.from_numpy(p.positions)[None])
        ref.assert_close(ours, theirs, f"image {i} through llama.cpp's mmproj")


def test_convert_mmproj_writes_what_llama_cpp_writes(checkpoint, tmp_path, capsys):
    out = tmp_path / "ours.mmproj.gguf"
    assert main(["convert", str(checkpoint.path), str(out), "--mmproj"]) == 0
    theirs, ours = GGUFReader(FIXTURE), GGUFReader(out)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.tensor_type, list(a.shape)) == (b.tensor_type, list(b.shape)), a.name
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data), err_msg=a.name)

    def fields(reader):
        skip = ("GGUF.", "general.name", "general.size_label")
        return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(skip)}

    assert fields(ours) == fields(theirs)


def test_gguf_target_with_mmproj_equals_the_hf_checkpoint(checkpoint, tmp_path):
    target = tmp_path / "target.gguf"
    assert main(["convert", str(checkpoint.path), str(target)]) == 0
    image = mref.test_image(50, 38, seed=9)
    greedy = SamplingParams(temperature=0)

    hf = gemma_mtp.load(checkpoint.path, dtype="float32", device="cpu", ctx_size=128)
    expected = hf.generate(PROMPT, images=[image], n_predict=8, sampling=greedy, spec=SpecOptions()).token_ids
    engine = gemma_mtp.load(target, dtype="float32", device="cpu", ctx_size=128)
    engine.mmproj = str(FIXTURE)
    # the tiny vocabulary has no released image ids: give the encoder this checkpoint's
    engine.media = load_media_encoder(
        str(target), dtype="float32", device="cpu", mmproj=str(FIXTURE), tokens=_tokens()
    )
    engine.media.options = OPTIONS  # (this checkpoint's budget: an mmproj does not carry one)
    ours = engine.generate(PROMPT, images=[image], n_predict=8, sampling=greedy, spec=SpecOptions()).token_ids
    assert ours == expected


def _tokens():
    from gemma_mtp.media.prompt import MediaTokens

    return MediaTokens(image=mref.IMAGE_TOKEN, boi=mref.BOI, eoi=mref.EOI)


def test_a_target_gguf_is_not_an_mmproj(reference_models, tmp_path):
    target = tmp_path / "t.gguf"
    assert main(["convert", str(reference_models.target("e2b").path), str(target)]) == 0
    with pytest.raises(ModelFormatError, match="not a vision mmproj"):
        load_mmproj_vision(target)


def test_mmproj_for_a_target_without_image_tokens_is_a_clear_error(tmp_path):
    with pytest.raises(GemmaMTPError, match="has no Gemma 4 image tokens"):
        load_media_encoder("t.gguf", dtype="float32", device="cpu", mmproj=str(FIXTURE), vocab_size=256)
