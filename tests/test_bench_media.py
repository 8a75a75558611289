"""`gemma-mtp bench` prompts that carry media: a JSONL line's `images` / `audio` (files relative to the
JSONL file) reach `Engine.generate` with the prompt, MTP stays lossless after them, and a missing
file, a mismatched placeholder count, a text-only model or an endpoint run is one clear error."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import pytest

from gemma_mtp.bench.cli import add_bench_arguments, bench_command
from gemma_mtp.bench.prompts import BenchPrompt, load_prompts, with_placeholders
from gemma_mtp.engine.engine import Engine
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.media.prompt import MediaTokens
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

pytest.importorskip("transformers")

TOKENS = MediaTokens(
    image=mref.IMAGE_TOKEN, boi=mref.BOI, eoi=mref.EOI, audio=mref.AUDIO_TOKEN, boa=mref.BOA, eoa=mref.EOA
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_media")
    target = aref.build_e2b_audio(root / "target", vision=True)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target, assistant


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """Two media prompts (one with its placeholders, one without) and one text-only prompt."""
    root = tmp_path_factory.mktemp("bench_media_prompts")
    (root / "media").mkdir()
    mref.test_image(50, 38, seed=9).save(root / "media" / "photo.png")
    (root / "media" / "clip.wav").write_bytes(aref.wav_bytes(aref.test_clip(0.6, seed=3)))
    lines = [
        {"category": "both", "prompt": [2, 17, mref.IMAGE_TOKEN, 40, mref.AUDIO_TOKEN, 23, 61]}
        | {"images": ["media/photo.png"], "audio": ["media/clip.wav"]},
        {"category": "audio", "prompt": [2, 5, 9, 13, 5, 9], "audio": ["media/clip.wav"]},
        {"category": "text", "prompt": [2, 40, 77, 3, 120, 9]},
    ]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser.add_subparsers())
    return bench_command(parser.parse_args(["bench", *argv]))


def test_media_files_are_read_relative_to_the_prompts_file(prompts_file):
    both, audio, text = load_prompts(str(prompts_file))
    assert both.images == (str(prompts_file.parent / "media" / "photo.png"),)
    assert both.audio == audio.audio == (str(prompts_file.parent / "media" / "clip.wav"),)
    assert text.media() == {} and both.media() == {"images": list(both.images), "audio": list(both.audio)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "hi", "images": ["nope.png"]}, r'prompts.jsonl:1: "images" file nope.png not found'),
        ({"prompt": "hi", "audio": "clip.wav"}, r'prompts.jsonl:1: "audio" must be a list of file paths'),
        ({"prompt": "hi", "audio": [3]}, r'"audio" must be a list of file paths'),
    ],
)
def test_a_bad_media_field_is_a_usage_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(UsageError, match=message):
        load_prompts(str(path))


def test_placeholders_go_after_bos_or_must_match_the_files():
    prompt = BenchPrompt("c", (2, 5), images=("a.png",), audio=("b.wav", "c.wav"))
    assert with_placeholders([2, 5], prompt, TOKENS, 1) == [
        2,
        mref.IMAGE_TOKEN,
        mref.AUDIO_TOKEN,
        mref.AUDIO_TOKEN,
        5,
    ]
    with pytest.raises(UsageError, match="prompt 4 has 1 audio placeholders but 2 audio files"):
        with_placeholders([2, mref.AUDIO_TOKEN, 5], prompt, TOKENS, 4)


def test_bench_passes_each_prompts_media_to_generate_and_stays_lossless(
    pair, prompts_file, tmp_path, monkeypatch
):
    target, assistant = pair
    calls = []
    generate = Engine.generate

    def spy(self, prompt, **kwargs):
        result = generate(self, prompt, **kwargs)
        calls.append(SimpleNamespace(ids=list(prompt), kwargs=kwargs, token_ids=list(result.token_ids)))
        return result

    monkeypatch.setattr(Engine, "generate", spy)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["-m", str(target.path), "-md", str(assistant.path), "--n-max", "2", "--reps", "1", "-n", "6"]
    code = bench(*argv, "--prompts", str(prompts_file), "--temp", "0", "--device", "cpu", "--out", str(out))
    assert code == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == {"all", "both", "audio", "text"}
    assert all(r["lossless"] for r in rows if r["n_max"] != 0)

    both, audio, text = load_prompts(str(prompts_file))
    measured = [c for c in calls if c.kwargs.get("n_predict") == 6]
    assert [c.kwargs.get("images") for c in measured[:3]] == [list(both.images), None, None]
    assert [c.kwargs.get("audio") for c in measured[:3]] == [list(both.audio), list(audio.audio), None]
    assert measured[1].ids[:2] == [2, mref.AUDIO_TOKEN]  # the placeholder bench put after <bos>
    # the plain run's answer to the audio prompt is what the engine gives with the clip directly
    plain_audio = measured[1]
    direct = generate(
        _engine(target),
        plain_audio.ids,
        n_predict=6,
        sampling=SamplingParams(temperature=0),
        spec=SpecOptions(),
        audio=list(audio.audio),
    )
    assert direct.token_ids == plain_audio.token_ids


def _engine(target):
    import gemma_mtp

    return gemma_mtp.load(target.path, dtype="float32", device="cpu", ctx_size=2048)


def test_media_prompts_on_a_text_only_model_are_one_error(reference_models, prompts_file):
    path = reference_models.target("e2b_conditional").path
    with pytest.raises(GemmaMTPError, match="has no (vision|audio) tower"):
        bench("-m", str(path), "--prompts", str(prompts_file), "--reps", "1", "-n", "4", "--device", "cpu")


def test_media_prompts_against_an_endpoint_are_refused(prompts_file):
    from gemma_mtp.bench.endpoint import EndpointConfig, run_endpoint_bench

    config = EndpointConfig(endpoints=("http://127.0.0.1:9",), prompts=str(prompts_file), reps=1)
    with pytest.raises(UsageError, match="prompt 1 of --prompts carries images or audio"):
        run_endpoint_bench(config)
