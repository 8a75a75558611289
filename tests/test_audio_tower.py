"""The audio tower + embedder and the log-mel features against transformers (fp32, max abs diff
<= 1e-4; features equal to the extractor's), WAV reading, strict loading."""

from __future__ import annotations

import json

import audio_reference as aref
import hf_reference as ref
import numpy as np
import pytest
import torch

from gemma_mtp.errors import GemmaMTPError, ModelFormatError
from gemma_mtp.media.audio import AudioOptions, audio_features, read_wav
from gemma_mtp.weights.towers import has_hf_audio, load_hf_audio

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def audio_reference(tmp_path_factory):
    return aref.build_e2b_audio(tmp_path_factory.mktemp("e2b_audio") / "model")


def ours_soft_tokens(model, clips):
    out = []
    for clip in clips:
        f = audio_features(clip)
        soft = model(torch.from_numpy(f.features)[None], torch.from_numpy(f.mask)[None])[0]
        assert soft.shape[0] == f.n_soft_tokens
        out.append(soft)
    return out


@pytest.mark.parametrize("seconds", [0.03, 0.77, 2.3])
def test_features_equal_the_feature_extractor(seconds):
    clip = aref.test_clip(seconds, seed=int(seconds * 10))
    theirs = aref.feature_extractor()([clip], return_tensors="np")
    ours = audio_features(clip)
    np.testing.assert_allclose(ours.features, theirs["input_features"][0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.mask, theirs["input_features_mask"][0])


def test_soft_token_count_equals_the_processor():
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    for seconds in (0.03, 0.77, 2.3):
        clip = aref.test_clip(seconds)
        # the processor's own arithmetic (no tokenizer needed for it)
        processor = Gemma4Processor.__new__(Gemma4Processor)
        processor.feature_extractor, processor.audio_seq_length = aref.feature_extractor(), 750
        assert audio_features(clip).n_soft_tokens == processor._compute_audio_num_tokens(clip, aref.RATE)


@torch.no_grad()
def test_soft_tokens_match_transformers(audio_reference):
    clips = [aref.test_clip(0.77, seed=1), aref.test_clip(2.3, seed=2)]
    model = load_hf_audio(audio_reference.path, dtype="float32")
    expected = [aref.hf_audio_features(audio_reference.model, [clip])[0] for clip in clips]
    for i, (ours, theirs) in enumerate(zip(ours_soft_tokens(model, clips), expected, strict=True)):
        ref.assert_close(ours, theirs, f"clip {i} soft tokens")


@torch.no_grad()
def test_a_padded_batch_matches_transformers(audio_reference):
    """Two clips of different lengths in one batch: the shorter one's padding frames are masked."""
    clips = [aref.test_clip(0.5, seed=3), aref.test_clip(1.9, seed=4)]
    batch = aref.feature_extractor()(clips, return_tensors="pt")
    model = load_hf_audio(audio_reference.path, dtype="float32")
    ours = model(batch["input_features"], batch["input_features_mask"])
    for i, theirs in enumerate(aref.hf_audio_features(audio_reference.model, clips)):
        ref.assert_close(ours[i], theirs, f"clip {i} in a padded batch")


def test_wav_files_decode_to_the_samples(tmp_path):
    clip = aref.test_clip(0.4)
    path = tmp_path / "clip.wav"
    path.write_bytes(aref.wav_bytes(clip))
    np.testing.assert_array_equal(read_wav(path, max_bytes=1 << 20), aref.wav_samples(clip))
    stereo = read_wav(aref.wav_bytes(clip, channels=2), max_bytes=1 << 20)
    np.testing.assert_array_equal(stereo, aref.wav_samples(clip))


def test_other_sampling_rates_are_resampled_to_16_khz():
    pytest.importorskip("scipy")
    clip = aref.test_clip(0.5)
    samples = read_wav(aref.wav_bytes(clip, rate=8000), max_bytes=1 << 20)
    assert samples.shape[0] == 2 * clip.shape[0]


def test_unreadable_and_oversized_audio_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(GemmaMTPError, match="bad.wav: not a readable WAV"):
        read_wav(bad, max_bytes=1 << 20)
    with pytest.raises(GemmaMTPError, match="over the 100-byte limit"):
        read_wav(aref.wav_bytes(aref.test_clip(0.1)), max_bytes=100)
    with pytest.raises(GemmaMTPError, match="too short"):
        audio_features(np.zeros(10, dtype=np.float32), AudioOptions())


def test_strict_loading_names_the_tensor(audio_reference, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "model"
    shutil.copytree(audio_reference.path, copy)
    [weights] = list(copy.glob("*.safetensors"))
    tensors = load_file(weights)
    name = "model.audio_tower.layers.1.self_attn.per_dim_scale"
    del tensors[name]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="missing tensor audio_tower.layers.1.self_attn.per_dim_scale"):
        load_hf_audio(copy)


def test_a_model_without_an_audio_config_has_no_audio_tower(reference_models):
    path = reference_models.target("e2b_conditional").path
    assert not has_hf_audio(path)
    assert json.loads((path / "config.json").read_text()).get("audio_config") is None
    with pytest.raises(ModelFormatError, match="no audio tower"):
        load_hf_audio(path)
