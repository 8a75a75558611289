"""Audio in the prompt: the target's logits after a clip equal transformers'; greedy MTP and n-gram
speculation with a clip equal plain greedy; `run --audio` equals the Python API; an image and a clip
in one prompt keep their order."""

from __future__ import annotations

import json

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import pytest
import torch

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0)
N_NEW = 12
PROMPT = [2, 17, 40, mref.AUDIO_TOKEN, 23, 5, 77, 5, 23, 61]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_pair")
    target = aref.build_e2b_audio(root / "target", vision=True)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target, assistant


@pytest.fixture(scope="module")
def engine(pair):
    target, assistant = pair
    return gemma_mtp.load(target.path, assistant.path, dtype="float32", device="cpu", ctx_size=256)


@pytest.fixture(scope="module")
def clip():
    return aref.test_clip(0.77, seed=5)


def hf_inputs(clip, prompt=PROMPT):
    batch = aref.feature_extractor()([clip], return_tensors="pt")
    n = int(audio_n(clip))
    ids = []
    for t in prompt:
        ids += aref.audio_placeholder(n) if t == mref.AUDIO_TOKEN else [t]
    return torch.tensor([ids]), batch


def audio_n(clip) -> int:
    from gemma_mtp.media.audio import audio_features

    return audio_features(clip).n_soft_tokens


@torch.no_grad()
def test_prompt_logits_after_a_clip_match_transformers(pair, engine, clip):
    target, _ = pair
    ids, batch = hf_inputs(clip)
    expected = target.model(
        input_ids=ids,
        input_features=batch["input_features"],
        input_features_mask=batch["input_features_mask"],
    ).logits.float()
    expanded, media = engine.media_encoder().prepare(PROMPT, [], [clip])
    assert expanded == ids[0].tolist()
    model, _ = ref.load_ours(target.path)
    cache = model.make_cache(batch_size=1, max_context=256, max_draft=4)
    out = model(ids, torch.arange(ids.shape[1])[None], cache, embeds=media.overrides(ids.shape[1]))
    ref.assert_close(model.logits(out.hidden), expected, "prompt logits with an audio clip")


@torch.no_grad()
def test_greedy_with_a_clip_equals_transformers_generate(pair, engine, clip):
    target, _ = pair
    ids, batch = hf_inputs(clip)
    out = target.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        input_features=batch["input_features"],
        input_features_mask=batch["input_features_mask"],
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=0,
    )
    result = engine.generate(PROMPT, audio=[clip], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions())
    assert result.token_ids == out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ["mtp", "ngram"])
def test_greedy_speculation_with_a_clip_equals_plain_greedy(engine, clip, kind):
    plain = engine.generate(PROMPT, audio=[clip], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions())
    spec = engine.generate(
        PROMPT, audio=[clip], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions(type=kind, n_max=3)
    )
    assert spec.token_ids == plain.token_ids
    assert spec.speculative["rounds"] > 0


def test_an_image_and_a_clip_fill_their_own_placeholders(engine, clip):
    image = mref.test_image(50, 38, seed=9)
    prompt = [2, 17, mref.IMAGE_TOKEN, 40, mref.AUDIO_TOKEN, 23, 61]
    ids, media = engine.media_encoder().prepare(prompt, [image], [clip])
    (image_start, n_image), (audio_start, n_audio) = media.spans
    assert ids[image_start - 1] == mref.BOI and ids[image_start + n_image] == mref.EOI
    assert ids[audio_start - 1] == mref.BOA and ids[audio_start + n_audio] == mref.EOA
    assert n_audio == audio_n(clip) and media.embeds[1].shape[0] == n_audio
    both = engine.generate(prompt, images=[image], audio=[clip], n_predict=4, sampling=GREEDY).token_ids
    assert len(both) == 4


def test_placeholder_count_must_match_the_clips(engine, clip):
    with pytest.raises(GemmaMTPError, match="1 audio placeholder.* but 2 audio"):
        engine.generate(PROMPT, audio=[clip, clip], n_predict=2, sampling=GREEDY)


def test_audio_for_a_model_without_an_audio_tower_is_a_clear_error(reference_models, clip):
    path = reference_models.target("e2b_conditional").path
    text_only = gemma_mtp.load(path, dtype="float32", device="cpu", ctx_size=64)
    with pytest.raises(GemmaMTPError, match="has no audio tower"):
        text_only.generate([2, 5, mref.AUDIO_TOKEN], audio=[clip], n_predict=2, sampling=GREEDY)


def test_run_audio_equals_the_api(pair, clip, tmp_path, capsys):
    target, _ = pair
    wav = tmp_path / "clip.wav"
    wav.write_bytes(aref.wav_bytes(clip))
    ids = ",".join(map(str, PROMPT))
    argv = ["run", "-m", str(target.path), "--prompt-ids", ids, "--audio", str(wav), "-n", "8", "--json"]
    code = main([*argv, "--temp", "0", "--device", "cpu", "--dtype", "float32", "--no-profile"])
    out = capsys.readouterr()
    assert code == 0, out.err
    got = json.loads(out.out)
    engine = gemma_mtp.load(target.path, dtype="float32", device="cpu", ctx_size=4096)
    expected = engine.generate(PROMPT, audio=[str(wav)], n_predict=8, sampling=GREEDY, spec=SpecOptions())
    assert got["token_ids"] == expected.token_ids and got["n_prompt"] == expected.n_prompt


def test_run_with_a_missing_audio_file_is_a_usage_error(pair, tmp_path, capsys):
    target, _ = pair
    code = main(["run", "-m", str(target.path), "--prompt-ids", "2,5", "--audio", str(tmp_path / "no.wav")])
    assert code == 2 and "--audio" in capsys.readouterr().err
