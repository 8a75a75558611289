"""`run --image` (llama.cpp's flag) and its errors; greedy output equals the Python API's."""

from __future__ import annotations

import json

import media_reference as mref
import pytest

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions

pytest.importorskip("transformers")

PROMPT = [2, 17, 40, mref.IMAGE_TOKEN, 23, 5, 77, 61]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return mref.build_e2b_vision(tmp_path_factory.mktemp("cli_vision") / "model")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    mref.test_image(50, 38, seed=9).save(path)
    return path


def run_json(capsys, *argv) -> dict:
    code = main(
        ["run", *argv, "--json", "--temp", "0", "--device", "cpu", "--dtype", "float32", "--no-profile"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_run_image_equals_the_api(checkpoint, image_file, capsys):
    ids = ",".join(map(str, PROMPT))
    got = run_json(
        capsys, "-m", str(checkpoint.path), "--prompt-ids", ids, "--image", str(image_file), "-n", "8"
    )
    engine = gemma_mtp.load(checkpoint.path, dtype="float32", device="cpu", ctx_size=4096)
    expected = engine.generate(
        PROMPT,
        images=[str(image_file)],
        n_predict=8,
        sampling=SamplingParams(temperature=0),
        spec=SpecOptions(),
    )
    assert got["token_ids"] == expected.token_ids
    assert got["n_prompt"] == expected.n_prompt > len(PROMPT)


def test_run_image_without_a_placeholder_puts_it_after_bos(checkpoint, image_file, capsys):
    model = str(checkpoint.path)
    with_one = run_json(
        capsys, "-m", model, "--prompt-ids", f"2,{mref.IMAGE_TOKEN},5,6", "--image", str(image_file)
    )
    without = run_json(capsys, "-m", model, "--prompt-ids", "2,5,6", "--image", str(image_file))
    assert without == {**with_one, "timings": without["timings"]}


def test_missing_image_file_is_a_usage_error(checkpoint, tmp_path, capsys):
    code = main(
        ["run", "-m", str(checkpoint.path), "--prompt-ids", "2,5", "--image", str(tmp_path / "nope.png")]
    )
    assert code == 2
    assert "--image" in capsys.readouterr().err


def test_unreadable_image_is_one_clear_error(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ids = f"2,{mref.IMAGE_TOKEN},5"
    code = main(
        ["run", "-m", str(checkpoint.path), "--prompt-ids", ids, "--image", str(bad), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "bad.jpg: not a readable image" in err and "Traceback" not in err


def test_image_for_a_text_only_model_is_one_clear_error(reference_models, image_file, capsys):
    path = reference_models.target("e2b").path
    code = main(
        ["run", "-m", str(path), "--prompt-ids", "2,5", "--image", str(image_file), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "has no vision tower" in err


class _Tokenizer:
    """Just enough of a tokenizer for ChatSession: `<|image|>` is the checkpoint's placeholder."""

    stop_ids = frozenset()

    def encode(self, text: str) -> list[int]:
        parts = text.split("<|image|>")
        ids = [2]
        for i, part in enumerate(parts):
            ids += [3 + ord(c) % 200 for c in part]
            if i < len(parts) - 1:
                ids.append(mref.IMAGE_TOKEN)
        return ids

    def decode(self, ids) -> str:
        return ""

    def token_to_id(self, token: str):
        return None

    def incremental_decoder(self):
        class _Decoder:
            def push(self, ids):
                return ""

            def flush(self):
                return ""

        return _Decoder()


class _Template:
    def render(self, messages, enable_thinking=None) -> str:
        def text(content):
            if isinstance(content, str):
                return content
            return "".join("<|image|>" if p["type"] == "image" else p["text"] for p in content)

        return "".join(f"[{m['role']}]{text(m['content'])}" for m in messages)


def test_chat_image_command_attaches_to_the_next_message_and_stays_in_the_history(
    checkpoint, image_file, tmp_path
):
    import io

    from gemma_mtp.cli.args import ChatOptions
    from gemma_mtp.cli.chat import ChatSession
    from gemma_mtp.errors import GemmaMTPError

    engine = gemma_mtp.load(checkpoint.path, dtype="float32", device="cpu", ctx_size=512)
    engine.tokenizer = _Tokenizer()
    greedy = SamplingParams(temperature=0)
    session = ChatSession(
        engine,
        _Template(),
        options=ChatOptions(n_predict=4),
        sampling=greedy,
        spec=SpecOptions(),
        out=io.StringIO(),
    )
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(GemmaMTPError, match="not a readable image"):
        session.attach(str(bad))
    session.attach(str(image_file))
    first_ids = session.prompt_ids("what is it?")
    first = session.answer("what is it?")
    expected = engine.generate(
        first_ids, images=[str(image_file)], n_predict=4, sampling=greedy, spec=SpecOptions()
    )
    assert first.token_ids == expected.token_ids
    assert session.pending == [] and session.images == [str(image_file)]
    second_ids = session.prompt_ids("and now?")
    assert second_ids.count(mref.IMAGE_TOKEN) == 1  # the first turn's image, re-read with the history
    second = session.answer("and now?")
    again = engine.generate(
        second_ids, images=[str(image_file)], n_predict=4, sampling=greedy, spec=SpecOptions()
    )
    assert second.token_ids == again.token_ids
