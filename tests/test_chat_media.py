"""`chat`'s `/audio PATH` (beside `/image PATH`): a clip goes with the next message, stays in the
history, and the answer (MTP drafting) equals `Engine.generate` with the same media; bad files are
one error line and the session goes on."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import pytest

import gemma_mtp
import gemma_mtp.cli.chat as chat_module
from gemma_mtp.cli.args import ChatOptions
from gemma_mtp.cli.chat import ChatSession
from gemma_mtp.cli.main import main
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0)
MARKERS = {"<|image|>": mref.IMAGE_TOKEN, "<|audio|>": mref.AUDIO_TOKEN}


class _Tokenizer:
    """Just enough of a tokenizer for chat: `<|image|>` / `<|audio|>` are the checkpoint's placeholders."""

    stop_ids = frozenset()

    def encode(self, text: str) -> list[int]:
        ids = [2]
        while text:
            marker = next((m for m in MARKERS if text.startswith(m)), None)
            if marker:
                ids.append(MARKERS[marker])
                text = text[len(marker) :]
            else:
                ids.append(3 + ord(text[0]) % 200)
                text = text[1:]
        return ids

    def decode(self, ids) -> str:
        return ""

    def token_to_id(self, token: str):
        return MARKERS.get(token)

    def incremental_decoder(self):
        return SimpleNamespace(push=lambda ids: "", flush=lambda: "")


class _Template:
    def render(self, messages, enable_thinking=None) -> str:
        def text(content):
            if isinstance(content, str):
                return content
            parts = {"image": "<|image|>", "audio": "<|audio|>"}
            return "".join(parts.get(p["type"]) or p["text"] for p in content)

        return "".join(f"[{m['role']}]{text(m['content'])}" for m in messages)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_media")
    target = aref.build_e2b_audio(root / "target", vision=True)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target, assistant


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_media_files")
    wav, image, bad = root / "clip.wav", root / "photo.png", root / "bad.wav"
    wav.write_bytes(aref.wav_bytes(aref.test_clip(0.6, seed=3)))
    mref.test_image(50, 38, seed=9).save(image)
    bad.write_bytes(b"RIFF but not a wav")
    return SimpleNamespace(wav=str(wav), image=str(image), bad=str(bad))


def test_chat_audio_command_attaches_to_the_next_message_and_stays_in_the_history(pair, files):
    target, assistant = pair
    engine = gemma_mtp.load(target.path, assistant.path, dtype="float32", device="cpu", ctx_size=512)
    engine.tokenizer = _Tokenizer()
    mtp = SpecOptions(type="mtp", n_max=3)
    session = ChatSession(
        engine, _Template(), options=ChatOptions(n_predict=6), sampling=GREEDY, spec=mtp, out=io.StringIO()
    )
    with pytest.raises(GemmaMTPError, match="bad.wav: not a readable WAV"):
        session.attach_audio(files.bad)
    with pytest.raises(GemmaMTPError, match="/audio needs a WAV file"):
        session.attach_audio("")
    session.attach_audio(files.wav)
    session.attach(files.image)
    first_ids = session.prompt_ids("what do you hear?")
    assert first_ids.count(mref.AUDIO_TOKEN) == 1 and first_ids.count(mref.IMAGE_TOKEN) == 1
    first = session.answer("what do you hear?")
    expected = engine.generate(
        first_ids, images=[files.image], audio=[files.wav], n_predict=6, sampling=GREEDY, spec=SpecOptions()
    )
    assert first.token_ids == expected.token_ids and first.speculative["drafted"] > 0
    assert session.pending_audio == [] and session.audio == [files.wav] and session.images == [files.image]

    session.attach_audio(files.wav)  # a second clip, for the second turn
    second_ids = session.prompt_ids("and this one?")
    assert second_ids.count(mref.AUDIO_TOKEN) == 2  # the first turn's clip is re-read with the history
    second = session.answer("and this one?")
    again = engine.generate(
        second_ids,
        images=[files.image],
        audio=[files.wav, files.wav],
        n_predict=6,
        sampling=GREEDY,
        spec=SpecOptions(),
    )
    assert second.token_ids == again.token_ids
    session.reset()
    assert session.audio == session.pending_audio == session.images == []


def test_chat_reads_audio_and_image_commands_from_its_input(pair, files, monkeypatch, capsys):
    target, _ = pair
    monkeypatch.setattr(chat_module, "read_tokenizer", lambda model, required: _Tokenizer())
    template = SimpleNamespace(for_tokenizer=lambda *args, **kwargs: _Template())
    monkeypatch.setattr(chat_module, "ChatTemplate", template)
    script = [f"/audio {files.bad}", "/audio", f"/audio {files.wav}", f"/image {files.image}", "hi", "/exit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(script) + "\n"))
    argv = ["chat", "-m", str(target.path), "-n", "3", "--temp", "0", "--device", "cpu", "--dtype", "float32"]
    assert main([*argv, "--no-profile", "-c", "512"]) == 0
    err = capsys.readouterr().err
    assert "error: " + files.bad + ": not a readable WAV" in err
    assert "error: /audio needs a WAV file: /audio PATH" in err
    n_prompt = int(err.split("[prompt ")[1].split(" ")[0])
    text_only = len(_Tokenizer().encode(_Template().render([{"role": "user", "content": "hi"}])))
    assert n_prompt > text_only + 4  # the clip's and the image's soft tokens and markers


def test_chat_audio_for_a_model_without_an_audio_tower_drops_the_clip(reference_models, files):
    from gemma_mtp.media.image import MediaError

    engine = gemma_mtp.load(reference_models.target("e2b_conditional").path, dtype="float32", device="cpu")
    engine.tokenizer = _Tokenizer()
    session = ChatSession(
        engine,
        _Template(),
        options=ChatOptions(n_predict=2),
        sampling=GREEDY,
        spec=SpecOptions(),
        out=io.StringIO(),
    )
    session.attach_audio(files.wav)
    with pytest.raises(MediaError, match="has no audio tower"):
        session.answer("hi")
