"""The 12B "unified" Gemma 4 in its released structure has no vision or audio tower, only
encoder-free embedders (`model.embed_vision` over raw patches, `model.embed_audio` over raw waveform
frames): its text loads and runs as transformers' does, and media are refused by one clear error."""

from __future__ import annotations

from pathlib import Path

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import pytest

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0)


def build_unified_with_embedders(path: Path) -> ref.Reference:
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    text = ref.gemma4_text_kwargs(
        layer_types=[ref.S, ref.F, ref.S, ref.S, ref.F],
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
        final_logit_softcapping=30.0,
    )
    for key in ("hidden_size_per_layer_input", "vocab_size_per_layer_input"):
        del text[key]  # not fields of the unified text config
    config = Gemma4UnifiedConfig(
        text_config=text,
        vision_config=dict(patch_size=4, pooling_kernel_size=2, mm_embed_dim=16, mm_posemb_size=32),
        audio_config=dict(audio_embed_dim=32),
        image_token_id=mref.IMAGE_TOKEN,
        audio_token_id=mref.AUDIO_TOKEN,
        video_token_id=ref.VOCAB - 3,
        boi_token_id=mref.BOI,
        eoi_token_id=mref.EOI,
        boa_token_id=mref.BOA,
        eoa_token_index=mref.EOA,
    )
    return ref._build(Gemma4UnifiedForConditionalGeneration, config, path, seed=3)


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    return build_unified_with_embedders(tmp_path_factory.mktemp("unified_media") / "model")


@pytest.fixture(scope="module")
def engine(unified):
    return gemma_mtp.load(unified.path, dtype="float32", device="cpu", ctx_size=128)


def test_the_released_structure_has_embedders_not_towers(unified):
    names = unified.model.state_dict()
    assert any(n.startswith("model.embed_vision.patch_dense") for n in names)
    assert any(n.startswith("model.embed_audio.embedding_projection") for n in names)
    assert not any("vision_tower" in n or "audio_tower" in n for n in names)


def test_its_text_loads_beside_the_embedders_and_matches_transformers(unified, engine):
    prompt = [2, 17, 40, 23, 5, 77, 61]
    expected = ref.hf_greedy(unified.model, prompt, 8)
    ours = engine.generate(prompt, n_predict=8, sampling=GREEDY, spec=SpecOptions()).token_ids
    assert ours == expected


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_media_are_refused_by_one_clear_error(engine, kind):
    media = {"images": [mref.test_image(20, 20)]} if kind == "images" else {"audio": [aref.test_clip(0.5)]}
    token = mref.IMAGE_TOKEN if kind == "images" else mref.AUDIO_TOKEN
    with pytest.raises(GemmaMTPError, match="12B unified Gemma 4 .* has no vision or audio tower"):
        engine.generate([2, token, 5], n_predict=2, sampling=GREEDY, spec=SpecOptions(), **media)


def test_run_audio_on_it_exits_1_with_that_message(unified, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(aref.wav_bytes(aref.test_clip(0.5)))
    argv = ["run", "-m", str(unified.path), "--prompt-ids", "2,5", "--audio", str(clip), "--device", "cpu"]
    code = main([*argv, "--no-profile"])
    err = capsys.readouterr().err
    assert code == 1 and "12B unified" in err and "Traceback" not in err
