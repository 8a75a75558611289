"""The tokenizer.json the llama.cpp fixtures' checkpoints carry (scripts/make_llama_cpp_fixtures.py
writes it; the tests write the same one to convert the rebuilt checkpoints with our converter)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_tokenizer"]


def write_tokenizer(hf_dir: Path, vocab_size: int) -> None:
    """A byte-fallback BPE of exactly `vocab_size` tokens (llama.cpp's converter reads tokenizer.json
    through `gguf.LlamaHfVocab` and needs as many tokens as embedding rows)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    tokens = specials + chars
    tokens += [f"<0x{b:02X}>" for b in range(256)][: vocab_size - len(tokens)]
    assert len(tokens) == vocab_size
    backend = Tokenizer(
        BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>", byte_fallback=True)
    )
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.save(str(hf_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        # the control tokens beyond bos/eos/pad/unk, so llama.cpp's converter types them as we do
        "additional_special_tokens": specials[4:],
        "extra_special_tokens": specials[4:],
    }
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
