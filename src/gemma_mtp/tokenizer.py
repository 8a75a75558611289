"""Text to token ids and back, built with the `tokenizers` library, tokenizing as llama.cpp does.

Two sources: a Hugging Face directory (``tokenizer.json`` + ``tokenizer_config.json``) or the
tokenizer a GGUF file carries in its metadata. GGUF vocabularies come in two kinds here:

- ``gemma4``: BPE over raw UTF-8 with the file's merges, spaces written as ``▁``, ``<0xXX>`` byte
  fallback, text split only at newline runs (llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_GEMMA4``).
- ``llama``: SentencePiece-style (Gemma 3): no merges, only a score per token; llama.cpp joins the
  adjacent pair whose joined text is the best-scoring token. BPE with merges ranked by that score
  makes the same choices, so we derive the merges from the scores.

In both, control tokens (``<bos>``, ``<|turn>``) are matched whole when ``parse_special`` is set and
user-defined tokens (``<|tool_call>``, Gemma 3's space runs) always, as llama.cpp's partition does.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from gguf import TokenType
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from .errors import ModelFormatError

__all__ = [
    "Tokenizer",
    "IncrementalDecoder",
    "load_tokenizer",
    "tokenizer_from_gguf_metadata",
    "tokenizer_from_hf_dir",
    "read_gguf_metadata",
]

# Token texts that end a generation although no metadata key names them: the Gemma 4 GGUFs carry
# only `eos_token_id`, and llama.cpp (llama-vocab.cpp, `special_eog_ids`) finds `<turn|>` and
# `<|tool_response>` by their text. We keep the subset of its list that Gemma models use.
END_OF_GENERATION_TEXTS = ("<eos>", "<turn|>", "<|tool_response>", "<end_of_turn>")
_EOG_METADATA_KEYS = ("eos_token_id", "eot_token_id", "eom_token_id")
SPACE = "\u2581"  # "▁", SentencePiece's visible space


class Tokenizer:
    """A ``tokenizers`` backend plus what generation needs: special ids, BOS policy, stop ids."""

    def __init__(
        self,
        backend: Backend,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        add_bos: bool = True,
        stop_ids: Iterable[int] = (),
        chat_template: str | None = None,
        source: str = "",
    ) -> None:
        self.backend = backend
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.add_bos = add_bos
        self.stop_ids = frozenset(stop_ids) | ({eos_id} if eos_id is not None else set())
        self.chat_template = chat_template
        self.source = source
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``<bos>`` first exactly once when ``add_bos`` (default: the model's).

        A text that already starts with ``<bos>`` (a rendered chat template) gets no second one.
        With ``parse_special=False`` control-token text such as ``<|turn>`` is tokenized as plain
        text (llama.cpp's ``parse_special``); user-defined tokens are matched whole either way.
        """
        with self._lock:  # the flag is backend state; hold it only for this call
            self.backend.encode_special_tokens = not parse_special
            try:
                ids = self.backend.encode(text, add_special_tokens=False).ids
            finally:
                self.backend.encode_special_tokens = False
        want_bos = self.add_bos if add_bos is None else add_bos
        if want_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; control tokens are left out when ``skip_special`` (user-defined kept)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def incremental_decoder(self, *, skip_special: bool = True) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special=skip_special)

    def special_tokens(self) -> dict[str, str]:
        """``bos_token``, ``eos_token``, ... as chat templates expect them (transformers' names)."""
        named = {
            "bos_token": self.bos_id,
            "eos_token": self.eos_id,
            "unk_token": self.unk_id,
            "pad_token": self.pad_id,
        }
        out = {}
        for name, token_id in named.items():
            text = None if token_id is None else self.id_to_token(token_id)
            if text is not None:
                out[name] = text
        return out

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, stop_ids={sorted(self.stop_ids)})"


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces that never end inside a UTF-8 character.

    Each step decodes a short window of recent ids twice (before and after the new ones) and emits
    the difference, holding it back while it ends in U+FFFD, i.e. while a byte-fallback character is
    still incomplete. Decoding a window rather than single tokens keeps whatever the decoder does
    across token boundaries (byte fusion, space handling) identical to ``Tokenizer.decode``.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._decode = lambda ids: tokenizer.decode(ids, skip_special=skip_special)
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids before it are fully emitted
        self._read = 0  # ids before it are reflected in the emitted text

    def push(self, ids: int | Iterable[int]) -> str:
        """Add generated ids; return the text they complete (possibly empty)."""
        self._ids.extend([ids] if isinstance(ids, int) else ids)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """The text still held back (an incomplete character decodes to U+FFFD here)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model: a GGUF file, a HF directory, or a ``tokenizer.json`` file."""
    path = Path(path)
    if path.is_dir():
        return tokenizer_from_hf_dir(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file or directory")
    with path.open("rb") as file:
        is_gguf = file.read(4) == b"GGUF"
    if is_gguf:
        return tokenizer_from_gguf_metadata(read_gguf_metadata(path, prefix="tokenizer."), source=str(path))
    if path.name == "tokenizer.json":
        return tokenizer_from_hf_dir(path.parent)
    raise ModelFormatError(f"{path}: neither a GGUF file nor a tokenizer.json (or a directory with one)")


# ---------------------------------------------------------------------------------------------
# GGUF


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any], *, source: str = "GGUF") -> Tokenizer:
    """Build the tokenizer described by GGUF ``tokenizer.*`` metadata (plain Python/numpy values)."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if kind not in _GGUF_BUILDERS:
        raise ModelFormatError(
            f"{source}: tokenizer.ggml.model is {kind!r}; supported: {', '.join(sorted(_GGUF_BUILDERS))}"
        )
    if not tokens:
        raise ModelFormatError(f"{source}: no tokenizer.ggml.tokens; this GGUF carries no vocabulary")
    tokens = list(tokens)
    types = metadata.get("tokenizer.ggml.token_type")
    types = [int(t) for t in types] if types is not None else [TokenType.NORMAL] * len(tokens)
    backend = _GGUF_BUILDERS[kind](metadata, tokens, source)
    _add_special_tokens(backend, tokens, types)
    _return_freed_heap()

    def special(name: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{name}")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    by_text = {text: i for i, text in enumerate(tokens) if text in END_OF_GENERATION_TEXTS}
    stop_ids = {special(key) for key in _EOG_METADATA_KEYS} | set(by_text.values())
    # llama.cpp forces BOS on for gemma4 vocabularies (ggml-org/llama.cpp#21500) and defaults it on
    # for SentencePiece ones; the chat template writes <bos> itself, which `encode` respects.
    add_bos = True if kind == "gemma4" else bool(metadata.get("tokenizer.ggml.add_bos_token", True))
    return Tokenizer(
        backend,
        bos_id=special("bos_token_id"),
        eos_id=special("eos_token_id"),
        pad_id=special("padding_token_id"),
        unk_id=special("unknown_token_id"),
        add_bos=add_bos,
        stop_ids=stop_ids - {None},
        chat_template=metadata.get("tokenizer.chat_template"),
        source=source,
    )


def _return_freed_heap() -> None:
    """Hand the heap pages freed after building back to the OS (glibc keeps them otherwise).

    Building a 262k-token BPE model frees ~40 MB of transients that would stay in RSS for good.
    """
    if sys.platform.startswith("linux"):
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only; musl has none
        if trim is not None:
            trim(0)


def _byte_fallback_decoder(strip_prefix_space: bool) -> decoders.Decoder:
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip_prefix_space:
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def _gemma4_backend(metadata: Mapping[str, Any], tokens: list[str], source: str) -> Backend:
    merges = metadata.get("tokenizer.ggml.merges")
    if not merges:
        raise ModelFormatError(
            f"{source}: tokenizer.ggml.model is gemma4 but tokenizer.ggml.merges is missing"
        )
    vocab = {text: i for i, text in enumerate(tokens)}
    pairs = _merge_pairs(merges, tokens, vocab, source)
    model = BPE(vocab=vocab, merges=pairs, unk_token=_unk_text(metadata, tokens), byte_fallback=True)
    del vocab, pairs  # the Rust model holds its own copies
    backend = Backend(model)
    backend.normalizer = normalizers.Replace(" ", SPACE)
    # llama.cpp splits at newline runs before BPE ("[^\n]+|[\n]+"); merges never cross them.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    backend.decoder = _byte_fallback_decoder(strip_prefix_space=False)
    return backend


def _merge_pairs(
    merges: Sequence[str], tokens: list[str], vocab: Mapping[str, int], source: str
) -> list[tuple[str, str]]:
    """``"left right"`` merges as pairs of the vocabulary's own strings, not fresh substrings."""
    try:
        return [
            (tokens[vocab[left]], tokens[vocab[right]])
            for left, _, right in map(str.partition, merges, repeat(" "))
        ]
    except KeyError as exc:
        raise ModelFormatError(
            f"{source}: tokenizer.ggml.merges names {exc.args[0]!r}, which is not in tokenizer.ggml.tokens"
        ) from None


def _sentencepiece_backend(metadata: Mapping[str, Any], tokens: list[str], source: str) -> Backend:
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ModelFormatError(
            f"{source}: tokenizer.ggml.model is llama but tokenizer.ggml.scores is missing"
        )
    vocab = {text: i for i, text in enumerate(tokens)}
    merges = _merges_from_scores(tokens, scores, vocab)
    model = BPE(vocab=vocab, merges=merges, unk_token=_unk_text(metadata, tokens), byte_fallback=True)
    del vocab, merges  # the Rust model holds its own copies
    backend = Backend(model)
    # llama.cpp escapes spaces after splitting out special tokens and, with add_space_prefix (its
    # default for this kind), puts one space before every text fragment; a normalizer runs per
    # fragment between added tokens, so Prepend does the same.
    add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend(SPACE)] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    backend.decoder = _byte_fallback_decoder(strip_prefix_space=add_space_prefix)
    return backend


def _merges_from_scores(
    tokens: list[str], scores: Sequence[float], vocab: Mapping[str, int]
) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, best-scoring result first (ties: lower id first).

    llama.cpp breaks ties between equal scores by text position, which fixed ranks cannot express;
    Gemma 3's normal tokens all have distinct scores, so only -1000-scored special tokens tie.
    Candidates are kept as ids and the pairs reuse the vocabulary's own strings: a Gemma 3 vocab
    has ~515k merges, and fresh substrings for them would cost ~150 MB.
    """
    get = vocab.get
    merged, cuts, lefts, rights = (array("i") for _ in range(4))
    for token_id, text in enumerate(tokens):
        for cut in range(1, len(text)):
            left = get(text[:cut])
            if left is not None and (right := get(text[cut:])) is not None:
                merged.append(token_id)
                cuts.append(cut)
                lefts.append(left)
                rights.append(right)
    order = np.lexsort((np.arange(len(tokens)), -np.asarray(scores, dtype=np.float64)))
    rank = np.empty(len(tokens), dtype=np.int64)
    rank[order] = np.arange(len(tokens))
    by_rank = np.lexsort((np.frombuffer(cuts, dtype=np.int32), rank[np.frombuffer(merged, dtype=np.int32)]))
    # Object arrays hand out the vocabulary's own str objects, with no int per merge on the way.
    texts = np.array(tokens, dtype=object)
    lefts_by_rank = texts[np.frombuffer(lefts, dtype=np.int32)[by_rank]]
    rights_by_rank = texts[np.frombuffer(rights, dtype=np.int32)[by_rank]]
    return list(zip(lefts_by_rank, rights_by_rank, strict=True))


def _unk_text(metadata: Mapping[str, Any], tokens: list[str]) -> str | None:
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    return tokens[int(unk)] if unk is not None and 0 <= int(unk) < len(tokens) else None


def _add_special_tokens(backend: Backend, tokens: list[str], types: list[int]) -> None:
    """Control/unknown tokens become special added tokens, user-defined ones plain added tokens."""
    special = (TokenType.CONTROL, TokenType.UNKNOWN)
    backend.add_special_tokens(
        [
            AddedToken(text, special=True, normalized=False)
            for text, t in zip(tokens, types, strict=True)
            if t in special
        ]
    )
    backend.add_tokens(
        [
            AddedToken(text, special=False, normalized=False)
            for text, t in zip(tokens, types, strict=True)
            if t == TokenType.USER_DEFINED
        ]
    )


_GGUF_BUILDERS = {"gemma4": _gemma4_backend, "llama": _sentencepiece_backend}


# ---------------------------------------------------------------------------------------------
# Hugging Face directory


def tokenizer_from_hf_dir(path: str | Path) -> Tokenizer:
    """``tokenizer.json`` plus ``tokenizer_config.json`` / ``special_tokens_map.json`` for specials."""
    path = Path(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelFormatError(f"{path}: no tokenizer.json; pass a model directory that has one, or a .gguf")
    backend = Backend.from_file(str(tokenizer_file))
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
    stop_ids |= {backend.token_to_id(text) for text in END_OF_GENERATION_TEXTS}
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
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from exc
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------
# GGUF metadata, read directly
#
# gguf.GGUFReader parses every array element into its own numpy view when a file is opened: about
# 25 s for a 262,144-token vocabulary with 515k merges on this project's CPU. Tokenizer loading only
# needs the key/value section, which this reads in well under a second (same values; a test checks).

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


def read_gguf_metadata(path: str | Path, *, prefix: str = "") -> dict[str, Any]:
    """GGUF key/value metadata whose keys start with ``prefix``: str, int, float, bool, lists of
    str, numeric arrays as numpy arrays. Other keys are skipped without decoding them."""
    path = Path(path)
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_metadata(data, prefix)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: cannot read GGUF metadata ({exc})") from exc


def _parse_metadata(data: mmap.mmap, prefix: str) -> dict[str, Any]:
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"not a little-endian GGUF v2/v3 file (magic {magic!r}, version {version})")
    offset, out = 24, {}
    for _ in range(n_kv):
        key, offset = _read_string(data, offset)
        (value_type,) = struct.unpack_from("<I", data, offset)
        wanted = key.startswith(prefix)
        value, offset = _read_value(data, offset + 4, value_type, decode=wanted)
        if wanted:
            out[key] = value
    return out


def _read_string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    end = offset + 8 + length
    return data[offset + 8 : end].decode("utf-8"), end


def _read_value(data: mmap.mmap, offset: int, value_type: int, *, decode: bool) -> tuple[Any, int]:
    if value_type == _STRING:
        return _read_string(data, offset)
    if value_type in _SCALARS:
        fmt = _SCALARS[value_type]
        return struct.unpack_from(fmt, data, offset)[0], offset + struct.calcsize(fmt)
    if value_type != _ARRAY:
        raise ValueError(f"unknown GGUF value type {value_type} at byte {offset}")
    item_type, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if item_type in _SCALARS:
        dtype = np.dtype(_SCALARS[item_type].replace("?", "u1"))
        end = offset + dtype.itemsize * count
        values = np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy() if decode else None
        return (values.astype(bool) if values is not None and item_type == 7 else values), end
    if item_type == _STRING:
        return _read_strings(data, offset, count, decode=decode)
    items = []
    for _ in range(count):  # arrays of arrays: not used by tokenizers, read for completeness
        item, offset = _read_value(data, offset, item_type, decode=decode)
        items.append(item)
    return (items if decode else None), offset


def _read_strings(data: mmap.mmap, offset: int, count: int, *, decode: bool) -> tuple[list[str] | None, int]:
    unpack = _U64.unpack_from
    items = []
    for _ in range(count):
        (length,) = unpack(data, offset)
        offset += 8
        if decode:
            items.append(data[offset : offset + length].decode("utf-8"))
        offset += length
    return (items if decode else None), offset
