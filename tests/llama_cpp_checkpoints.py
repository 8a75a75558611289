"""The checkpoints of the llama.cpp fixtures: scripts/make_llama_cpp_fixtures.py builds them for
llama.cpp, the tests rebuild the same ones (from the seeds) to hold our loader and converter against
llama.cpp's files.

- `build_e2b_like`: hf_reference's E2B shape but with 3 KV-shared layers: llama.cpp's loader
  hard-codes that the last two KV-owning layers are sliding then full, as in the released E2B/E4B
  (`llama-kv-cache.cpp`, `GGML_ASSERT(map_layer_ids.find(il_reuse) ...)` otherwise), while
  hf_reference's E2B-like model (2 shared layers) ends its owners with full then sliding.
- `write_tokenizer`: a tokenizer.json of exactly the vocabulary size, which llama.cpp's converter needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import hf_reference as ref

__all__ = ["write_tokenizer", "build_e2b_like", "BUILDERS"]


def build_e2b_like(path: Path, *, seed: int = 0) -> ref.Reference:
    text = ref.e2b_text_kwargs()
    text["num_kv_shared_layers"] = 3  # owners S, S, F; shared S, S, F read layers 1 and 2
    return ref._gemma4(Path(path), seed, text, False)


# fixture target name -> builder(path, seed=...) and its seed
BUILDERS = {
    "e2b": (build_e2b_like, 0),
    "moe": (ref.build_moe_like, 1),
    "dense31b": (ref.build_dense31b_like, 2),
    "unified": (ref.build_unified_like, 3),
}


def write_tokenizer(hf_dir: Path, vocab_size: int) -> None:
    """A byte-fallback BPE of exactly `vocab_size` tokens (llama.cpp's converter reads tokenizer.json
    through `gguf.LlamaHfVocab` and needs as many tokens as embedding rows)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    # a few merges: llama.cpp's gemma4 vocabulary refuses a BPE without any ("cannot find tokenizer merges")
    merges = [("t", "h"), ("h", "e"), ("i", "n"), ("\u2581", "t")]
    tokens = specials + chars + ["".join(m) for m in merges]
    tokens += [f"<0x{b:02X}>" for b in range(256)][: vocab_size - len(tokens)]
    assert len(tokens) == vocab_size
    backend = Tokenizer(
        BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token="<unk>", byte_fallback=True)
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
