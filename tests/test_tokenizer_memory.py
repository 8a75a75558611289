"""Tokenizer building keeps one copy of each token text: the merges handed to the BPE model are the
vocabulary's own str objects, not fresh substrings (on a 262k-token vocabulary with ~515k merges
those cost ~150 MB of peak memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from asset_helpers import fetch

from gemma_mtp.assets import llama_cpp_vocab
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.tokenizer import read_gguf_metadata, tokenizer_from_gguf_metadata
from gemma_mtp.tokenizer.from_gguf import _merge_pairs, _merges_from_scores


def metadata_of(name: str) -> dict:
    path: Path = fetch(lambda: llama_cpp_vocab(name))
    return read_gguf_metadata(path, prefix="tokenizer.")


def merges_by_slicing(tokens: list[str], scores: np.ndarray) -> list[tuple[str, str]]:
    """The definition: every split into two tokens, best score first, then lower id, then cut."""
    vocab = {text: i for i, text in enumerate(tokens)}
    ranked = [
        (-float(scores[token_id]), token_id, cut, text[:cut], text[cut:])
        for token_id, text in enumerate(tokens)
        for cut in range(1, len(text))
        if text[:cut] in vocab and text[cut:] in vocab
    ]
    ranked.sort(key=lambda merge: merge[:3])
    return [(left, right) for *_, left, right in ranked]


def assert_vocabulary_strings(pairs: list[tuple[str, str]], tokens: list[str]) -> None:
    own = {id(text) for text in tokens}
    strangers = [pair for pair in pairs if id(pair[0]) not in own or id(pair[1]) not in own]
    assert strangers == [], f"{len(strangers)} merges hold fresh strings, e.g. {strangers[:3]}"


def test_sentencepiece_merges_match_their_definition_and_reuse_vocabulary_strings() -> None:
    metadata = metadata_of("llama-spm")
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    vocab = {text: i for i, text in enumerate(tokens)}
    merges = _merges_from_scores(tokens, scores, vocab)
    assert merges == merges_by_slicing(tokens, scores)
    assert_vocabulary_strings(merges, tokens)


def test_gguf_merges_reuse_vocabulary_strings() -> None:
    metadata = metadata_of("gemma-4")
    tokens, merges = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"]
    vocab = {text: i for i, text in enumerate(tokens)}
    pairs = _merge_pairs(merges, tokens, vocab, "gemma-4")
    assert pairs == [tuple(merge.split(" ", 1)) for merge in merges]
    assert_vocabulary_strings(pairs, tokens)


def test_merge_of_unknown_token_names_the_key_and_the_token() -> None:
    metadata = {
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.tokens": ["<unk>", "a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b", "a x"],
    }
    with pytest.raises(ModelFormatError, match=r"tiny: tokenizer\.ggml\.merges names 'x'"):
        tokenizer_from_gguf_metadata(metadata, source="tiny")
