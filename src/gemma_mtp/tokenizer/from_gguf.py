"""A tokenizer from the ``tokenizer.*`` metadata a GGUF file carries, tokenizing as llama.cpp does.

GGUF vocabularies come in two kinds here:

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
import sys
from array import array
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from gguf import TokenType
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from ..errors import ModelFormatError
from ..gguf.keys import EOG_ID_KEYS, EOG_TOKEN_TEXTS
from .core import SPACE, Tokenizer

__all__ = ["tokenizer_from_gguf_metadata", "GGUF_TOKENIZER_KINDS"]


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any], *, source: str = "GGUF") -> Tokenizer:
    """Build the tokenizer described by GGUF ``tokenizer.*`` metadata (plain Python/numpy values)."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if kind is None:
        raise ModelFormatError(
            f"{source}: this GGUF carries no tokenizer (no tokenizer.ggml.model key); give the token ids "
            "of the prompt (--prompt-ids), or use a model file that embeds its tokenizer"
        )
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

    def token_id(key: str) -> int | None:
        value = metadata.get(key)
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    def special(name: str) -> int | None:
        return token_id(f"tokenizer.ggml.{name}")

    by_text = {text: i for i, text in enumerate(tokens) if text in EOG_TOKEN_TEXTS}
    stop_ids = {token_id(key) for key in EOG_ID_KEYS} | set(by_text.values())
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
GGUF_TOKENIZER_KINDS = tuple(sorted(_GGUF_BUILDERS))
