"""A Hugging Face checkpoint's tokenizer -> the GGUF ``tokenizer.*`` metadata llama.cpp's converter
writes for Gemma (``convert_hf_to_gguf.py``: ``Gemma4Model.set_vocab``, ``Gemma3Model.set_vocab``),
so that `gemma_mtp.tokenizer` and llama.cpp read back the tokenizer the checkpoint came with.

- Gemma 4 (targets and assistants): ``tokenizer.ggml.model = "gemma4"``: the token table, the BPE
  merges, a -1000 placeholder score per token (BPE does not read scores; llama.cpp writes the same),
  and the tool-call and channel tokens typed USER_DEFINED so they stay visible in output.
- Gemma 3: ``"llama"`` (SentencePiece-style): a score per token and no merges. llama.cpp reads the
  scores from ``tokenizer.model``; we derive them from ``tokenizer.json``'s merge ranks (minus the
  rank of the first merge that makes a token), which readers turn back into the same merge order.
  That is exact for tokenizers converted from SentencePiece, where every split of a token into two
  tokens is a merge; a token no merge makes can still be formed by a reader, last of all.

Keys are written by `gguf.GGUFWriter`'s own methods (and `gguf.SpecialVocab` for the merges,
special ids and add-token flags) on a writer that never opens a file, then returned as entries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from ..config import AssistantConfig, TextConfig
from ..errors import ModelFormatError
from ..tokenizer import SPACE, tokenizer_from_hf_dir
from .keys import K
from .writer import Entry

__all__ = ["tokenizer_entries", "VISIBLE_TOKENS", "PLACEHOLDER_SCORE"]

# llama.cpp's Gemma4Model.set_vocab types these USER_DEFINED: the chat parser must see them in output.
VISIBLE_TOKENS = frozenset(
    {
        "<|channel>",
        "<channel|>",
        "<|tool_call>",
        "<tool_call|>",
        "<|tool_response>",
        "<tool_response|>",
        '<|"|>',
    }
)
PLACEHOLDER_SCORE = -1000.0  # gguf.LlamaHfVocab's score for every token (BPE vocabularies)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def tokenizer_entries(src_dir: str | Path, config: TextConfig | AssistantConfig) -> list[Entry]:
    """The ``tokenizer.*`` entries for the checkpoint in `src_dir`; [] when it has no tokenizer.json.

    The chat template is the one `gemma_mtp.tokenizer` uses for the directory (chat_template.jinja
    first, as transformers does); a table shorter than the embedding is padded with UNUSED
    ``[PADn]`` tokens, as llama.cpp pads it."""
    src = Path(src_dir)
    path = src / "tokenizer.json"
    if not path.is_file():
        return []
    data = _read_json(path)
    _check_model(data, path)
    kind = "llama" if config.family == "gemma3" else "gemma4"
    tokens, types = _token_table(data, kind, config.vocab_size, path)
    pairs = _merge_pairs(data, path)
    if kind == "gemma4":
        _check_mergeable(pairs, path)
    try:
        hf = tokenizer_from_hf_dir(src)
    except ModelFormatError:
        raise
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise ModelFormatError(f"{path}: the tokenizers library cannot read it ({exc})") from None
    # SentencePiece-style files carry no merges: scores stand for them
    special = SpecialVocab(src, load_merges=kind == "gemma4", n_vocab=len(tokens))

    writer = GGUFWriter(None, "unused")  # a key collector: never opened, never written
    writer.add_tokenizer_model(kind)
    if kind == "llama":
        writer.add_tokenizer_pre("default")
        scores = _scores_from_merges(tokens, pairs)
    else:
        scores = [PLACEHOLDER_SCORE] * len(tokens)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    # BOS as our HF tokenizer adds it (llama.cpp forces it on for gemma4 vocabularies)
    special.add_special_token["bos"] = True if kind == "gemma4" else hf.add_bos
    special.chat_template = hf.chat_template
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(_adds_space_prefix(data))
    return [
        Entry(key, v.value, v.type, v.sub_type)
        for key, v in writer.kv_data[0].items()
        if key != K.ARCHITECTURE
    ]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelFormatError(f"{path}: no tokenizer model in this tokenizer.json")
    return data


def _check_model(data: dict[str, Any], path: Path) -> None:
    model = data["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        what = f"a {model.get('type')} tokenizer" + (
            "" if model.get("byte_fallback") else " without byte fallback"
        )
        raise ModelFormatError(
            f"{path}: {what}; gemma-mtp embeds Gemma's BPE tokenizers with byte fallback only "
            "(move tokenizer.json aside to convert the weights alone)"
        )


def _token_table(data: dict[str, Any], kind: str, n_vocab: int, path: Path) -> tuple[list[str], list[int]]:
    """(token texts by id, token types), padded to the embedding's `n_vocab` rows."""
    by_id: dict[int, str] = {}
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}
    entries = [(text, int(i)) for text, i in data["model"].get("vocab", {}).items()]
    entries += [(t["content"], i) for i, t in added.items()]
    for text, i in entries:
        if by_id.setdefault(i, text) != text:
            raise ModelFormatError(f"{path}: token id {i} is both {by_id[i]!r} and {text!r}")
    missing = next((i for i in range(len(by_id)) if i not in by_id), None)
    if missing is not None:
        raise ModelFormatError(
            f"{path}: no token has id {missing}; the token ids must run 0..{len(by_id) - 1}"
        )
    if len(by_id) > n_vocab:
        raise ModelFormatError(
            f"{path}: {len(by_id)} tokens, but the model's embedding has {n_vocab} rows (config.json vocab_size)"
        )
    tokens, types = [], []
    for i in range(len(by_id)):
        text = by_id[i]
        if i in added:
            kind_of = TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED
        else:
            kind_of = TokenType.BYTE if _BYTE_TOKEN.fullmatch(text) else TokenType.NORMAL
        if kind == "gemma4" and text in VISIBLE_TOKENS:
            kind_of = TokenType.USER_DEFINED
        tokens.append(text)
        types.append(int(kind_of))
    for i in range(len(by_id), n_vocab):  # llama.cpp pads a short table the same way
        tokens.append(f"[PAD{i}]")
        types.append(int(TokenType.UNUSED))
    return tokens, types


def _merge_pairs(data: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    """tokenizer.json's merges as (left, right), in rank order (either of its two spellings)."""
    pairs = []
    for merge in data["model"].get("merges") or []:
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise ModelFormatError(f"{path}: merge {merge!r} is not a pair of tokens")
        pairs.append((pair[0], pair[1]))
    return pairs


def _check_mergeable(pairs: list[tuple[str, str]], path: Path) -> None:
    """GGUF stores a merge as "left right": a token with a space in it cannot be written (Gemma's
    write spaces as "▁"; gguf.SpecialVocab would re-spell them, breaking the merge)."""
    bad = next((pair for pair in pairs if " " in pair[0] or " " in pair[1]), None)
    if bad is not None:
        raise ModelFormatError(
            f"{path}: merge {list(bad)!r} has a space inside a token; GGUF merges cannot hold it"
        )


def _scores_from_merges(tokens: list[str], pairs: list[tuple[str, str]]) -> list[float]:
    """Minus the rank of the first merge that makes each token; tokens no merge makes score below all."""
    vocab = {text: i for i, text in enumerate(tokens)}
    floor = -float(len(pairs))
    scores = [floor] * len(tokens)
    for rank in range(len(pairs) - 1, -1, -1):  # backwards: the first merge's rank is written last
        token_id = vocab.get(pairs[rank][0] + pairs[rank][1])
        if token_id is not None:
            scores[token_id] = -float(rank)
    return scores


def _adds_space_prefix(data: dict[str, Any]) -> bool:
    """Whether tokenizer.json puts a "▁" before the text (a Prepend normalizer or a Metaspace
    pre-tokenizer that prepends); Gemma's do not, and llama.cpp writes False for them."""

    def steps(node: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(node, dict):
            return []
        return [s for s in node.get(key, [node]) if isinstance(s, dict)]

    normalizers = steps(data.get("normalizer"), "normalizers")
    if any(s.get("type") == "Prepend" and s.get("prepend") == SPACE for s in normalizers):
        return True
    pre_tokenizers = steps(data.get("pre_tokenizer"), "pretokenizers")
    return any(
        s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") in ("always", "first")
        for s in pre_tokenizers
    )
