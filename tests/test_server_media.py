"""Images and audio through the server: the official `openai` client's image message (a data:
URL) and input_audio message (base64 WAV) get the answer `Engine.generate(images=/audio=...)`
gives; MTP and n-gram speculation with media answer as plain greedy does; local files only under
--allow-local-media; remote URLs, bad or oversized media, media outside user messages and a model
without a vision tower are 400s that name the part. `--mmproj` is one load flag of run, chat and
serve, and a `gemma_mtp.load` option."""

from __future__ import annotations

import base64
import io

import audio_reference as aref
import hf_reference as ref
import media_reference as mref
import pytest
import server_model
from server_model import AUTH, MODEL, RunningServer, server_settings

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import gemma_mtp  # noqa: E402
from gemma_mtp.chat import parse_chat_output, render_chat  # noqa: E402
from gemma_mtp.errors import UsageError  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.server.media import image_source  # noqa: E402
from gemma_mtp.server.schemas import RequestError  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402
from gemma_mtp.tokenizer import load_tokenizer  # noqa: E402

GREEDY = SamplingParams(temperature=0)
N_NEW = 12
# the media markers at the tiny checkpoint's ids, so that the template's text tokenizes to them
MEDIA_SPECIALS = {
    mref.IMAGE_TOKEN: ("<|image|>", 3),
    mref.BOI: ("<|image>", 3),
    mref.EOI: ("<image|>", 3),
    mref.AUDIO_TOKEN: ("<|audio|>", 3),
    mref.BOA: ("<|audio>", 3),
    mref.EOA: ("<audio|>", 3),
}
# server_model's template, with content parts rendered as the Gemma 4 template does (<|image|> per image)
CONTENT = """{%- if message['content'] is string -%}{{- message['content'] | trim -}}
{%- else -%}{%- for part in message['content'] or [] -%}
{%- if part['type'] == 'image' -%}{{- '<|image|>' -}}{%- elif part['type'] == 'audio' -%}{{- '<|audio|>' -}}
{%- else -%}{{- part['text'] | trim -}}{%- endif -%}
{%- endfor -%}{%- endif -%}"""
TEMPLATE = server_model.TEMPLATE.replace("{{- (message['content'] or '') | trim -}}", CONTENT)
assert TEMPLATE != server_model.TEMPLATE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_media")
    target = aref.build_e2b_audio(root / "target", vision=True)
    server_model.write_tokenizer(target.path, template=TEMPLATE, extra_specials=MEDIA_SPECIALS)
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return {"target": target.path, "assistant": assistant.path}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("allowed_media")


@pytest.fixture(scope="module")
def server(models, media_dir):
    settings = server_settings(models, parallel=2, allow_local_media=str(media_dir))
    with RunningServer(settings) as running:
        yield running.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=server_model.API_KEY, timeout=120, max_retries=0
    )


@pytest.fixture(scope="module")
def engine(models):
    loaded = gemma_mtp.load(
        models["target"], models["assistant"], dtype="float32", device="cpu", ctx_size=256
    )
    loaded.tokenizer = load_tokenizer(models["target"])  # the server's: with the chat template
    return loaded


@pytest.fixture(scope="module")
def image():
    return mref.test_image(50, 38, seed=9)


def encoded(image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str = "what is in it?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def expected_answer(engine, image_source=None, text: str = "what is in it?", spec=None, audio=None):
    """The library's greedy answer to the same message: (parsed answer, Result)."""
    kind = "image" if audio is None else "audio"
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]
    ids = engine.tokenizer.encode(render_chat(engine.tokenizer, messages))
    media = {"images": [image_source]} if audio is None else {"audio": [audio]}
    result = engine.generate(ids, n_predict=N_NEW, sampling=GREEDY, spec=spec or SpecOptions(), **media)
    stop_ids = engine.stop_ids | engine.tokenizer.stop_ids
    text_out = engine.tokenizer.decode([t for t in result.token_ids if t not in stop_ids])
    return parse_chat_output(text_out), result


def ask(client, messages, **body):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=N_NEW, temperature=0, extra_body=body or None
    )


# ---------------------------------------------------------------------------------------------
# the official client


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_the_openai_image_message_answers_as_the_engine_does(client, engine, image, fmt, mime):
    data = encoded(image, fmt)
    answer = ask(client, image_message(data_url(data, mime)), speculative={"enabled": False})
    parsed, result = expected_answer(engine, data)
    assert (answer.choices[0].message.content or "") == parsed.content
    assert answer.usage.prompt_tokens == result.n_prompt  # the image's soft-token slots are in the prompt
    assert answer.usage.completion_tokens == len(result.token_ids)


def audio_message(wav: bytes, text: str = "what is in it?") -> list[dict]:
    clip = {"data": base64.b64encode(wav).decode(), "format": "wav"}
    return [
        {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": clip}, {"type": "text", "text": text}],
        }
    ]


def test_the_openai_audio_message_answers_as_the_engine_does(client, engine):
    wav = aref.wav_bytes(aref.test_clip(0.77, seed=5))
    answer = ask(client, audio_message(wav), speculative={"enabled": False})
    parsed, result = expected_answer(engine, audio=wav)
    assert (answer.choices[0].message.content or "") == parsed.content
    assert answer.usage.prompt_tokens == result.n_prompt > 20
    assert answer.usage.completion_tokens == len(result.token_ids)


def test_mtp_with_audio_answers_as_plain_greedy(client):
    messages = audio_message(aref.wav_bytes(aref.test_clip(0.77, seed=5)))
    plain = ask(client, messages, speculative={"enabled": False}, ignore_eos=True)
    drafted = ask(client, messages, speculative={"type": "mtp", "n_max": 3}, ignore_eos=True)
    assert drafted.choices[0].message.content == plain.choices[0].message.content
    assert drafted.usage == plain.usage and drafted.model_extra["timings"]["draft_n"] > 0


def test_bad_audio_parts_are_400s(server):
    field = "messages[0].content[0].input_audio"
    assert_400(post(server, audio_message(b"RIFF nope")), field, "not a readable WAV")
    mp3 = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}]
    assert_400(post(server, [{"role": "user", "content": mp3}]), f"{field}.format", "WAV")


def test_the_image_reaches_the_model(client, engine, image):
    with_image = ask(client, image_message(data_url(encoded(image))), speculative={"enabled": False})
    text_only = ask(client, [{"role": "user", "content": "what is in it?"}], speculative={"enabled": False})
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens + 10


@pytest.mark.parametrize("speculative", [{"type": "mtp", "n_max": 3}, {"type": "ngram", "n_max": 2}])
def test_speculation_with_an_image_answers_as_plain_greedy(client, image, speculative):
    messages = image_message(data_url(encoded(image)))
    plain = ask(client, messages, speculative={"enabled": False}, ignore_eos=True)
    drafted = ask(client, messages, speculative=speculative, ignore_eos=True)
    assert drafted.choices[0].message.content == plain.choices[0].message.content
    assert drafted.usage == plain.usage
    if speculative["type"] == "mtp":
        assert drafted.model_extra["timings"]["draft_n"] > 0


def test_a_streamed_image_answer_equals_the_whole_one(client, image):
    messages = image_message(data_url(encoded(image)))
    whole = ask(client, messages)
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=N_NEW, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")


def test_a_local_file_under_the_allowed_directory_equals_the_data_url(client, image, media_dir):
    (media_dir / "photo.png").write_bytes(encoded(image))
    inline = ask(client, image_message(data_url(encoded(image))))
    for url in (str(media_dir / "photo.png"), (media_dir / "photo.png").as_uri(), "photo.png"):
        by_file = ask(client, image_message(url))
        assert by_file.choices[0].message.content == inline.choices[0].message.content, url
        assert by_file.usage == inline.usage


def test_two_images_in_one_message_both_reach_the_model(client, image):
    url = data_url(encoded(image))
    one = ask(client, image_message(url))
    parts = [{"type": "image_url", "image_url": {"url": url}}] * 2 + [{"type": "text", "text": "compare"}]
    two = ask(client, [{"role": "user", "content": parts}])
    assert two.usage.prompt_tokens > one.usage.prompt_tokens + 10


# ---------------------------------------------------------------------------------------------
# errors: 400s that name the part


def post(server, messages) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def assert_400(response: httpx.Response, param: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"], error
    for word in words:
        assert word in error["message"], error


FIELD = "messages[0].content[0].image_url"


def test_an_undecodable_image_is_a_400(server):
    assert_400(post(server, image_message(data_url(b"not an image at all"))), FIELD, "not a readable image")


def test_a_data_url_that_is_not_base64_is_a_400(server):
    assert_400(post(server, image_message("data:image/png;base64,@@@@")), f"{FIELD}.url", "not valid base64")
    assert_400(post(server, image_message("data:image/png,rawbytes")), f"{FIELD}.url", "must be base64")
    assert_400(post(server, image_message("data:text/plain;base64,aGk=")), f"{FIELD}.url", "not an image")


def test_an_image_over_the_limit_is_a_400(server, image):
    service = server.state.service
    data = encoded(image)
    limit, service.max_media_bytes = service.max_media_bytes, len(data) // 2
    try:
        assert_400(post(server, image_message(data_url(data))), f"{FIELD}.url", "limit")
    finally:
        service.max_media_bytes = limit


def test_a_remote_url_is_refused_with_what_to_send_instead(server):
    assert_400(post(server, image_message("https://example.com/cat.png")), f"{FIELD}.url", "data: URL")


def test_local_files_need_the_flag_and_stay_inside_its_directory(server, image, media_dir, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(encoded(image))
    assert_400(post(server, image_message(str(outside))), f"{FIELD}.url", "outside")
    assert_400(post(server, image_message("../" + outside.name)), f"{FIELD}.url", "outside")
    assert_400(post(server, image_message("missing.png")), f"{FIELD}.url", "no such file")
    service = server.state.service
    allowed, service.local_media = service.local_media, None
    try:
        assert_400(post(server, image_message(str(outside))), f"{FIELD}.url", "--allow-local-media DIR")
    finally:
        service.local_media = allowed


def test_an_image_outside_a_user_message_is_a_400(server, image):
    parts = [{"type": "image_url", "image_url": {"url": data_url(encoded(image))}}]
    messages = [{"role": "system", "content": parts}, {"role": "user", "content": "hi"}]
    assert_400(post(server, messages), "messages[0].content[0]", "user messages")


def test_an_unknown_content_part_type_is_a_400(server):
    messages = [{"role": "user", "content": [{"type": "file", "file": {"file_id": "x"}}]}]
    assert_400(post(server, messages), "messages[0].content[0].type", "image_url")


def test_a_model_without_a_vision_tower_says_so(reference_models, tmp_path, image):
    models = server_model.servable_models(reference_models, tmp_path)
    settings = server_settings(models, parallel=1, model_draft=None, spec=server_model.SpecFlags())
    with RunningServer(settings) as running:
        running.wait_ready()
        response = post(running, image_message(data_url(encoded(image))))
    assert_400(response, FIELD, "no vision tower", "--mmproj")


# ---------------------------------------------------------------------------------------------
# the parts without HTTP


def test_image_sources_without_a_directory_allow_only_data_urls(tmp_path):
    png = encoded(mref.test_image(8, 8))
    assert image_source(data_url(png), "f", local_dir=None, max_bytes=1 << 20) == png
    for url in ("http://x/y.png", "ftp://x/y.png", str(tmp_path / "a.png"), "file:///etc/passwd"):
        with pytest.raises(RequestError) as caught:
            image_source(url, "f", local_dir=None, max_bytes=1 << 20)
        assert caught.value.param == "f" and "data: URL" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# --mmproj: one load flag of run, chat and serve; gemma_mtp.load(mmproj=)


@pytest.mark.parametrize("command", ["run", "chat", "serve"])
def test_mmproj_is_a_load_option_of_every_media_surface(command):
    from gemma_mtp.cli.main import build_parser
    from gemma_mtp.cli.model_args import load_options_from_args

    args = build_parser().parse_args([command, "-m", "t.gguf", "--mmproj", "m.gguf"])
    assert load_options_from_args(args).mmproj == "m.gguf"


def test_load_with_a_missing_mmproj_is_a_usage_error_before_loading(tmp_path):
    with pytest.raises(UsageError, match="--mmproj .*no such file"):
        gemma_mtp.load(tmp_path / "not-loaded.gguf", mmproj=str(tmp_path / "missing.gguf"))
