"""The tokenizer generation uses: a ``tokenizers`` backend plus special ids, the BOS policy and the
end-of-generation ids (`Tokenizer`), and streaming detokenization (`IncrementalDecoder`). Built by
`from_gguf` (GGUF metadata) and `from_hf` (a Hugging Face directory)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as Backend

__all__ = ["Tokenizer", "IncrementalDecoder", "SPACE"]

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
