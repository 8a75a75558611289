"""Media in chat requests: OpenAI content parts decoded, put into the template's messages, and
encoded by the model's towers into the soft tokens a job carries (``Job.media``).

Audio comes as ``input_audio`` (base64 WAV, ``format: "wav"``). Images come inline as ``data:``
URLs (base64 PNG, JPEG, WebP: whatever Pillow reads), or as local files (a path or a ``file://``
URL) only when the server runs with ``--allow-local-media DIR`` and the file is inside DIR.
Remote ``http(s)`` URLs are refused: the server fetches nothing (it may run without a network,
and fetching for a client would open the server's network to it). Every error is a
``RequestError`` naming the part at fault (``messages[0].content[1].image_url``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..media.image import MediaError, open_image
from .schemas import MEDIA_PARTS, ChatCompletionRequest, ChatMessage, ContentPart, RequestError

__all__ = [
    "MediaPart",
    "request_media",
    "template_content",
    "image_source",
    "media_encoder",
    "encode_media",
    "has_media",
]

_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<data>.*)", re.DOTALL)
LOCAL_FLAG = "--allow-local-media DIR"


@dataclass(frozen=True)
class MediaPart:
    kind: str  # "image" or "audio"
    field: str  # where the request carries it, e.g. messages[0].content[1].image_url
    value: Any  # the decoded image (PIL) or audio clip


def has_media(request: ChatCompletionRequest) -> bool:
    return any(part.type in MEDIA_PARTS for _, _, part in _parts(request.messages))


def _parts(messages: Sequence[ChatMessage]):
    for i, message in enumerate(messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            yield i, j, part


def template_content(message: ChatMessage) -> str | list[dict[str, str]] | None:
    """The message's content for the chat template: a string when it carries no media (its text
    parts joined, as before media), else transformers' parts (``{"type": "image"}`` where each image
    goes: the template writes the placeholder, as for `run --chat`)."""
    content = message.content
    if not isinstance(content, list):
        return content
    if not any(part.type in MEDIA_PARTS for part in content):
        return "".join(part.text or "" for part in content)
    out = []
    for part in content:
        if part.type == "text":
            out.append({"type": "text", "text": part.text or ""})
        else:
            out.append({"type": MEDIA_PARTS[part.type]})
    return out


def request_media(
    request: ChatCompletionRequest, *, local_dir: Path | None, max_bytes: int
) -> list[MediaPart]:
    """Every media part of the request decoded, in prompt order."""
    out = []
    for i, j, part in _parts(request.messages):
        if part.type in MEDIA_PARTS:
            field = f"messages[{i}].content[{j}].{part.type}"
            out.append(_decode(part, field, local_dir=local_dir, max_bytes=max_bytes))
    return out


def _decode(part: ContentPart, field: str, *, local_dir: Path | None, max_bytes: int) -> MediaPart:
    if part.type == "input_audio":
        return MediaPart("audio", field, _audio(part, field, max_bytes=max_bytes))
    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
    source = image_source(url, f"{field}.url", local_dir=local_dir, max_bytes=max_bytes)
    try:
        image = open_image(source, max_bytes=max_bytes, what=field)
    except MediaError as exc:
        raise RequestError(str(exc), param=field) from None
    return MediaPart("image", field, image)


def _audio(part: ContentPart, field: str, *, max_bytes: int):
    from ..media.audio import read_wav  # numpy only

    kind = (part.input_audio.format or "wav").lower()
    if kind != "wav":
        raise RequestError(
            f"{field}.format: {kind!r} audio is not supported; send WAV (format 'wav')",
            param=f"{field}.format",
        )
    data = _base64(part.input_audio.data, f"{field}.data", max_bytes=max_bytes, what="audio")
    try:
        return read_wav(data, max_bytes=max_bytes, what=field)
    except MediaError as exc:
        raise RequestError(str(exc), param=field) from None


def image_source(url: str, field: str, *, local_dir: Path | None, max_bytes: int) -> bytes | Path:
    """The bytes of a ``data:`` URL, or the path of an allowed local file."""
    url = url.strip()
    if url[:5].lower() == "data:":
        return _data_url(url, field, max_bytes=max_bytes)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        raise RequestError(
            f"{field}: remote URLs are not fetched (this server has no network access for requests); "
            "send the image inline as a data: URL, e.g. data:image/png;base64,...",
            param=field,
        )
    if scheme == "file":
        path = Path(unquote(urlsplit(url).path))
    elif len(scheme) > 1:  # (a one-letter "scheme" is a Windows drive)
        raise RequestError(f"{field}: {scheme}: URLs are not supported; send a data: URL", param=field)
    else:
        path = Path(url)
    return _local_file(path, field, local_dir)


def _data_url(url: str, field: str, *, max_bytes: int) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise RequestError(f"{field}: not a data URL (data:image/png;base64,...)", param=field)
    kind = match["type"].strip().lower()
    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
        raise RequestError(f"{field}: a data URL of type {kind!r} is not an image", param=field)
    if "base64" not in (p.strip().lower() for p in match["params"].split(";")):
        raise RequestError(
            f"{field}: the data URL must be base64 (data:{kind or 'image/png'};base64,...)", param=field
        )
    return _base64(match["data"], field, max_bytes=max_bytes, what="image")


def _base64(text: str, field: str, *, max_bytes: int, what: str) -> bytes:
    data = "".join(text.split())
    if len(data) // 4 * 3 > max_bytes + 2:  # before decoding: the limit is on the file's bytes
        raise RequestError(
            f"{field}: {what} is about {len(data) // 4 * 3} bytes, over the {max_bytes}-byte limit",
            param=field,
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{field}: not valid base64 ({exc})", param=field) from None


def _local_file(path: Path, field: str, local_dir: Path | None) -> Path:
    if local_dir is None:
        raise RequestError(
            f"{field}: local files are not allowed; send the image inline as a data: URL "
            f"(data:image/png;base64,...), or start the server with {LOCAL_FLAG} to allow files under DIR",
            param=field,
        )
    root = local_dir.resolve()
    resolved = (root / path).resolve()  # a relative path is under DIR; ".." and links are followed
    if not resolved.is_relative_to(root):
        raise RequestError(
            f"{field}: {path} is outside the directory {LOCAL_FLAG} allows ({root})", param=field
        )
    if not resolved.is_file():
        raise RequestError(f"{field}: {path}: no such file under {root}", param=field)
    return resolved


def media_encoder(service: Any, parts: Sequence[MediaPart]) -> Any:
    """The model's media encoder (its tower loaded on first use); a 400 naming the first part
    when the model has none (a text-only model, or a GGUF target served without --mmproj)."""
    first = parts[0].field
    if service.media_encoder is None:
        raise RequestError(f"{first}: this server cannot take images", param=first)
    with service.media_lock:
        try:
            encoder = service.media_encoder()
        except MediaError as exc:
            raise RequestError(f"{first}: {exc}", param=first) from None
    for part in parts:
        try:
            encoder.require(images=part.kind == "image", audio=part.kind == "audio")
        except MediaError as exc:
            raise RequestError(f"{part.field}: {exc}", param=part.field) from None
    return encoder


def encode_media(encoder: Any, lock: Any, ids: list[int], parts: Sequence[MediaPart]):
    """(expanded ids, `PromptMedia`) for a rendered prompt and its decoded parts: the towers run
    under ``lock``, one request at a time (call it off the event loop)."""
    images = [part.value for part in parts if part.kind == "image"]
    audio = [part.value for part in parts if part.kind == "audio"]
    for kind, given in (("image", images), ("audio", audio)):
        found = sum(1 for t in ids if t == encoder.tokens.markers(kind)[0])
        if found != len(given):
            raise RequestError(
                f"messages: the chat template wrote {found} {kind} placeholder(s) for {len(given)} {kind} part(s); "
                f"use a template that renders {kind} content parts (the model's own Gemma 4 template does), "
                "e.g. with --chat-template-file FILE, and do not type the placeholder token in text",
                param="messages",
            )
    with lock:
        try:
            return encoder.prepare(ids, images, audio)
        except MediaError as exc:
            raise RequestError(str(exc), param="messages") from None
