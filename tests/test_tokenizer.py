"""Tokenizer: llama.cpp's own test vectors, llama.cpp's SentencePiece algorithm, BOS/stop policy,
Unicode round trips and streaming detokenization."""

from __future__ import annotations

import heapq
import json
import random
from pathlib import Path

import numpy as np
import pytest
from asset_helpers import fetch

from gemma_mtp.assets import gemma3_270m_gguf, llama_cpp_vocab
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.tokenizer import (
    SPACE,
    Tokenizer,
    load_tokenizer,
    read_gguf_metadata,
    tokenizer_from_gguf_metadata,
)


@pytest.fixture(scope="module")
def gemma4_vocab() -> Path:
    return fetch(lambda: llama_cpp_vocab("gemma-4"))


@pytest.fixture(scope="module")
def gemma4(gemma4_vocab: Path) -> Tokenizer:
    return load_tokenizer(gemma4_vocab)


@pytest.fixture(scope="module")
def llama_spm_vocab() -> Path:
    return fetch(lambda: llama_cpp_vocab("llama-spm"))


def read_test_vectors(vocab: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's format (tests/test-tokenizer-0.cpp): inputs separated by a marker line,
    outputs one line of space-separated ids per input."""
    inputs = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(outputs) >= len(inputs)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(inputs, outputs, strict=False)]


def mismatches(tokenizer: Tokenizer, vectors: list[tuple[str, list[int]]]) -> list[str]:
    # test-tokenizer-0 tokenizes with add_special=false, parse_special=false: no BOS, and control
    # token text read as plain text.
    out = []
    for text, expected in vectors:
        got = tokenizer.encode(text, add_bos=False, parse_special=False)
        if got != expected:
            out.append(f"{text!r}: got {got}, llama.cpp {expected}")
    return out


def test_gemma4_reproduces_every_llama_cpp_test_vector(gemma4: Tokenizer, gemma4_vocab: Path) -> None:
    vectors = read_test_vectors(gemma4_vocab)
    assert len(vectors) == 46
    assert mismatches(gemma4, vectors) == []


def test_sentencepiece_vocab_reproduces_every_llama_cpp_test_vector(llama_spm_vocab: Path) -> None:
    vectors = read_test_vectors(llama_spm_vocab)
    assert mismatches(load_tokenizer(llama_spm_vocab), vectors) == []


def test_gemma4_special_ids_and_stop_ids(gemma4: Tokenizer) -> None:
    assert (gemma4.pad_id, gemma4.eos_id, gemma4.bos_id, gemma4.unk_id) == (0, 1, 2, 3)
    assert gemma4.vocab_size == 262_144
    assert gemma4.stop_ids == {1, 106, 50}  # <eos>, <turn|>, <|tool_response>


def test_bos_is_added_exactly_once(gemma4: Tokenizer) -> None:
    plain = gemma4.encode("Hello world")
    assert plain[0] == 2 and plain.count(2) == 1
    assert gemma4.encode("<bos>Hello world") == plain
    assert gemma4.encode("Hello world", add_bos=False) == plain[1:]
    assert gemma4.encode("") == [2]


def test_control_tokens_in_chat_text_are_single_tokens(gemma4: Tokenizer) -> None:
    ids = gemma4.encode("<bos><|turn>user\nHi<turn|>\n<|turn>model\n")
    assert ids == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107]
    literal = gemma4.encode("<|turn>user", add_bos=False, parse_special=False)
    assert 105 not in literal and gemma4.decode(literal) == "<|turn>user"


def test_user_defined_tokens_match_whole_even_without_parse_special(gemma4: Tokenizer) -> None:
    text = '<|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|>'
    for parse_special in (True, False):
        ids = gemma4.encode(text, add_bos=False, parse_special=parse_special)
        assert ids[0] == 48 and ids[-1] == 49 and ids.count(52) == 2


def test_decode_drops_control_tokens_and_keeps_user_defined_ones(gemma4: Tokenizer) -> None:
    ids = [2, 105, 9259, 106, 48, 52]
    assert gemma4.decode(ids) == 'Hello<|tool_call><|"|>'
    assert gemma4.decode(ids, skip_special=False) == '<bos><|turn>Hello<turn|><|tool_call><|"|>'


def random_text(rng: random.Random, length: int) -> str:
    """Mostly printable text with spaces and newlines, plus any Unicode scalar value."""
    pieces = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.5:
            pieces.append(rng.choice("abcdefghijklmnopqrstuvwxyz ABCXYZ  \n\t.,!?'\"-0123456789"))
        elif roll < 0.8:
            pieces.append(chr(rng.randint(0x80, 0x2FFF)))
        else:
            code = rng.randint(0x3000, 0x10FFFF)
            pieces.append(chr(code if not 0xD800 <= code < 0xE000 else 0xFFFD))
    return "".join(pieces)


def test_arbitrary_unicode_round_trips(gemma4: Tokenizer) -> None:
    rng = random.Random(20240401)
    for _ in range(300):
        text = random_text(rng, rng.randint(0, 40))
        assert gemma4.decode(gemma4.encode(text, add_bos=False, parse_special=False)) == text


def test_text_with_control_tokens_round_trips_when_kept(gemma4: Tokenizer) -> None:
    text = "<bos><|turn>user\n  Hi\t<|image|> there<turn|>\n"
    assert gemma4.decode(gemma4.encode(text), skip_special=False) == text


def test_incremental_decoder_never_emits_half_a_character(gemma4: Tokenizer) -> None:
    text = "Zürich 𠀀 🧿 ꙮ\U0010ffff end 中文"
    ids = gemma4.encode(text, add_bos=False)
    assert len(ids) > len(text) // 2  # several characters fall back to byte tokens
    decoder = gemma4.incremental_decoder()
    pieces = [decoder.push(token_id) for token_id in ids] + [decoder.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
    assert "" in pieces  # a byte token that leaves a character unfinished emits nothing


def test_incremental_decoder_matches_decode_on_random_streams(gemma4: Tokenizer) -> None:
    rng = random.Random(7)
    for _ in range(20):
        ids = [rng.randrange(gemma4.vocab_size) for _ in range(30)]
        decoder = gemma4.incremental_decoder()
        streamed = "".join(decoder.push(token_id) for token_id in ids) + decoder.flush()
        assert streamed == gemma4.decode(ids)


# ---------------------------------------------------------------------------------------------
# SentencePiece ("llama") vocabularies against a port of llama.cpp's algorithm


class LlamaCppSpm:
    """Python port of llama.cpp's tokenizer_st_partition + llm_tokenizer_spm_session."""

    def __init__(self, metadata: dict) -> None:
        tokens = metadata["tokenizer.ggml.tokens"]
        types = [int(t) for t in metadata["tokenizer.ggml.token_type"]]
        self.scores = [float(s) for s in metadata["tokenizer.ggml.scores"]]
        self.vocab = {token: i for i, token in enumerate(tokens)}
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        by_length = sorted(range(len(tokens)), key=lambda i: -len(tokens[i].encode()))
        # parse_special=False still cuts out user-defined tokens (type 4), not control/unknown (3, 2)
        self.specials = {
            parse_special: [
                (tokens[i], i) for i in by_length if types[i] in ((2, 3, 4) if parse_special else (4,))
            ]
            for parse_special in (True, False)
        }

    def encode(self, text: str, *, parse_special: bool) -> list[int]:
        fragments: list[str | int] = [text] if text else []
        for special, special_id in self.specials[parse_special]:
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    split.append(fragment)
                    continue
                for k, part in enumerate(fragment.split(special)):
                    if k:
                        split.append(special_id)
                    if part:
                        split.append(part)
            fragments = split
        out: list[int] = []
        previous_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                previous_special = True
                continue
            if self.add_space_prefix and previous_special:
                fragment = " " + fragment
            out += spm_merge(fragment.replace(" ", SPACE), self.vocab, self.scores)
            previous_special = False
        return out


def spm_merge(text: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    symbols = list(text)
    n = len(symbols)
    prev, nxt = list(range(-1, n - 1)), [*range(1, n), -1]
    queue: list[tuple[float, int, int, int]] = []

    def add(left: int, right: int) -> None:
        if left >= 0 and right >= 0 and (token := vocab.get(symbols[left] + symbols[right])) is not None:
            # highest score first, then leftmost, as llama.cpp's llm_bigram_spm comparator
            heapq.heappush(queue, (-scores[token], left, right, len(symbols[left] + symbols[right])))

    for i in range(1, n):
        add(i - 1, i)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != size:
            continue
        symbols[left] += symbols[right]
        symbols[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        add(prev[left], left)
        add(left, nxt[left])
    out = []
    i = 0 if n else -1
    while i != -1:
        if symbols[i] in vocab:
            out.append(vocab[symbols[i]])
        else:  # merges only build vocabulary tokens, so this is one character: byte fallback
            out += [vocab[f"<0x{byte:02X}>"] for byte in symbols[i].encode()]
        i = nxt[i]
    return out


def assert_matches_llama_cpp_spm(path: Path, texts: list[str]) -> Tokenizer:
    metadata = read_gguf_metadata(path, prefix="tokenizer.")
    tokenizer = tokenizer_from_gguf_metadata(metadata, source=str(path))
    reference = LlamaCppSpm(metadata)
    for text in texts:
        for parse_special in (True, False):
            expected = reference.encode(text, parse_special=parse_special)
            assert tokenizer.encode(text, add_bos=False, parse_special=parse_special) == expected, text
    return tokenizer


def spm_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    extra = [
        "é",
        "中文",
        "😀",
        "\u0301",
        "\U0010ffff",
        "<b>",
        "</s>",
        "<start_of_turn>",
        "[multimodal]",
        "  ",
        "\n\n",
    ]
    return [
        "".join(rng.choice([*"abcdefgh xyz  .,!?'-019\n\t", *extra]) for _ in range(rng.randint(0, 40)))
        for _ in range(count)
    ]


def test_sentencepiece_merges_follow_llama_cpp_on_the_llama_vocab(llama_spm_vocab: Path) -> None:
    assert_matches_llama_cpp_spm(llama_spm_vocab, spm_texts(1, 300))


def test_gemma3_270m_tokenizes_as_llama_cpp() -> None:
    path = fetch(gemma3_270m_gguf)
    tokenizer = assert_matches_llama_cpp_spm(path, spm_texts(2, 100))
    assert tokenizer.stop_ids == {1, 106}  # <eos>, <end_of_turn>
    assert tokenizer.chat_template is None  # a base model
    # user-defined whitespace tokens are cut out before spaces become "▁", as in llama.cpp
    assert tokenizer.encode("Hello  world") == [2, 9259, 138, 12392]


# ---------------------------------------------------------------------------------------------
# Small synthetic files: the GGUF reader, the HF directory path, errors

SYNTHETIC_PIECES = [f"{SPACE}a", "ab", "abc", "a", "b", "c", SPACE, "  "]


def write_sentencepiece_gguf(path: Path, *, model: str = "llama") -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "gemma3")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = specials + byte_tokens + SYNTHETIC_PIECES
    scores = [0.0] * (len(specials) + 256) + [-1.0, -2.0, -3.0, -10.0, -11.0, -12.0, -13.0, 0.0]
    types = [3] * len(specials) + [6] * 256 + [1] * 7 + [4]
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def synthetic_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    write_sentencepiece_gguf(path)
    return path


def test_metadata_reader_agrees_with_gguf_reader(synthetic_gguf: Path) -> None:
    from gguf import GGUFReader

    reference = {name: field.contents() for name, field in GGUFReader(synthetic_gguf).fields.items()}
    ours = read_gguf_metadata(synthetic_gguf)
    assert set(ours) == {name for name in reference if not name.startswith("GGUF.")}
    for name, value in ours.items():
        expected = reference[name]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, np.asarray(expected))
        else:
            assert value == expected, name


def test_synthetic_sentencepiece_gguf_tokenizes_by_score(synthetic_gguf: Path) -> None:
    tokenizer = load_tokenizer(synthetic_gguf)
    pieces = lambda text: [tokenizer.id_to_token(i) for i in tokenizer.encode(text, add_bos=False)]  # noqa: E731
    assert pieces("abc ab") == ["abc", f"{SPACE}a", "b"]  # "▁a" outranks "ab"
    assert pieces("x") == ["<0x78>"]  # byte fallback
    assert pieces("a  b") == ["a", "  ", "b"]  # user-defined run taken whole
    assert tokenizer.encode("<start_of_turn>abc") == [2, 4, tokenizer.token_to_id("abc")]
    assert tokenizer.decode(tokenizer.encode("abc ab x")) == "abc ab x"
    assert tokenizer.stop_ids == {1, 5}


def test_hf_directory_loads_with_specials_and_template(synthetic_gguf: Path, tmp_path: Path) -> None:
    source = load_tokenizer(synthetic_gguf)
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    source.backend.save(str(model_dir / "tokenizer.json"))
    config = {
        "bos_token": "<bos>",
        "eos_token": {"content": "<eos>"},
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    (model_dir / "chat_template.jinja").write_text("{{ bos_token }}hi")
    tokenizer = load_tokenizer(model_dir)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 1, 0)
    assert tokenizer.stop_ids == {1, 5}
    assert tokenizer.chat_template == "{{ bos_token }}hi"
    assert tokenizer.encode("abc ab") == source.encode("abc ab")


def test_unsupported_gguf_tokenizer_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    write_sentencepiece_gguf(path, model="bert")
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.model is 'bert'"):
        load_tokenizer(path)


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelFormatError, match="broken.gguf"):
        load_tokenizer(tmp_path / "broken.gguf")
