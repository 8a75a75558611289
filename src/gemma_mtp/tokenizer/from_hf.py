"""A tokenizer from a Hugging Face directory: ``tokenizer.json`` for the model, and
``tokenizer_config.json`` / ``special_tokens_map.json`` / ``generation_config.json`` for the
special and end-of-generation ids and the chat template."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from ..errors import ModelFormatError
from ..gguf.formats import access_error
from ..gguf.keys import EOG_TOKEN_TEXTS
from .core import Tokenizer

__all__ = ["tokenizer_from_hf_dir"]


def tokenizer_from_hf_dir(path: str | Path) -> Tokenizer:
    """``tokenizer.json`` plus ``tokenizer_config.json`` / ``special_tokens_map.json`` for specials."""
    path = Path(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelFormatError(f"{path}: no tokenizer.json; pass a model directory that has one, or a .gguf")
    backend = Backend.from_str(_read_text(tokenizer_file))
    config = _read_json(path / "tokenizer_config.json")
    special_map = _read_json(path / "special_tokens_map.json")

    def special(name: str) -> int | None:
        value = config.get(name, special_map.get(name))
        text = value.get("content") if isinstance(value, dict) else value
        return backend.token_to_id(text) if isinstance(text, str) else None

    stop_ids = {special("eos_token")}
    for file in ("generation_config.json", "config.json"):
        eos = _read_json(path / file).get("eos_token_id")
        stop_ids |= set(eos if isinstance(eos, list) else [eos])
    stop_ids |= {backend.token_to_id(text) for text in EOG_TOKEN_TEXTS}
    bos_id = special("bos_token")
    return Tokenizer(
        backend,
        bos_id=bos_id,
        eos_id=special("eos_token"),
        pad_id=special("pad_token"),
        unk_id=special("unk_token"),
        add_bos=bool(config.get("add_bos_token", bos_id is not None)),
        stop_ids={i for i in stop_ids if isinstance(i, int)},
        chat_template=_hf_chat_template(path, config),
        source=str(path),
    )


def _hf_chat_template(path: Path, config: Mapping[str, Any]) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return _read_text(jinja)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise access_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path}: not UTF-8 text ({exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    text = _read_text(path)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from exc
    return value if isinstance(value, dict) else {}
