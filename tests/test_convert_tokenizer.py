"""`convert` embeds the checkpoint's tokenizer and chat template: what it writes reads back through
`gemma_mtp.tokenizer.load_tokenizer` and tokenizes exactly as the HF tokenizer.json does (Gemma 4
as llama.cpp's "gemma4" BPE vocabulary, Gemma 3 as a SentencePiece-style "llama" one), and
`gguf.GGUFReader` reads the keys. On the real Gemma 4 vocabulary the keys match llama.cpp's own."""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from pathlib import Path

import gguf
import hf_reference as ref
import numpy as np
import pytest
from asset_helpers import fetch
from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from gemma_mtp.assets import gemma3_270m_gguf, llama_cpp_vocab
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.gguf.vocab import tokenizer_entries
from gemma_mtp.gguf.writer import write_gguf
from gemma_mtp.tokenizer import SPACE, load_tokenizer, read_gguf_metadata
from gemma_mtp.tokenizer import Tokenizer as GemmaTokenizer
from gemma_mtp.tools.convert import convert_hf_to_gguf

pytest.importorskip("transformers")

SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<|turn>",
    "<turn|>",
    "<|tool_call>",
    "<tool_call|>",
]
SPECIALS += ['<|"|>']
NEWLINE_RUNS = ["\n", "\n\n"]  # Gemma 3 keeps these as user-defined (non-special) added tokens
BYTES = [f"<0x{b:02X}>" for b in sorted(set("é€🙂\t".encode()))]
ALPHABET = [SPACE, *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"()[]{}<>|=*+-_/"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Speculative decoding drafts a few tokens and the target model verifies them all at once.",
    "Hello world! Hello there, world. A token is a piece of text; tokens make up a prompt.",
    "<|turn>user\nWhat is the capital of France?<turn|>\n<|turn>model\nParis is the capital.<turn|>",
]
TEXTS = [
    "Hello world",
    "the quick brown fox jumps over the lazy dog",
    "  two leading spaces and   three inside ",
    "tabs\tand\nnewlines\n\n\nhere\n",
    "café costs 5€ 🙂",
    "<bos>text that starts with bos",
    "<|turn>user\nhi there<turn|>\n<|turn>model\n",
    '<|tool_call>call:add{a:<|"|>two<|"|>}<tool_call|>',
    "",
]
TEMPLATE = "{{ bos_token }}{% for m in messages %}<|turn>{{ m.role }}\n{{ m.content }}<turn|>\n{% endfor %}"
MIN_PADDED = 4  # the tiny tables are at least this much shorter than the models' 256-row embedding


def _hf_tokenizer(kind: str) -> Tokenizer:
    """A small Gemma-style tokenizer.json: BPE with byte fallback, "▁" for spaces, control tokens
    first. `gemma4`: trained merges, text split at newline runs. `gemma3`: merges as a
    SentencePiece conversion makes them (every split of a token, best token first), newline runs
    as added tokens."""
    fixed = SPECIALS + (NEWLINE_RUNS if kind == "gemma3" else []) + BYTES
    alphabet = ALPHABET + (["\n"] if kind == "gemma4" else [])
    trainer = BpeTrainer(
        vocab_size=ref.VOCAB - MIN_PADDED - len(fixed),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    learner = Tokenizer(BPE())
    learner.normalizer = normalizers.Replace(" ", SPACE)
    learner.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    learner.train_from_iterator(CORPUS, trainer)
    learned = json.loads(learner.to_str())["model"]
    order = [t for t in sorted(learned["vocab"], key=learned["vocab"].get) if t not in fixed]
    vocab = {text: i for i, text in enumerate(fixed + order)}
    if kind == "gemma4":
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    else:
        merges = [
            (text[:cut], text[cut:])
            for text in order
            for cut in range(1, len(text))
            if text[:cut] in vocab and text[cut:] in vocab
        ]
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    if kind == "gemma4":
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if kind == "gemma3":
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in NEWLINE_RUNS])
    assert backend.get_vocab_size() <= ref.VOCAB - MIN_PADDED
    return backend


def _with_tokenizer(src: Path, dst: Path, kind: str, *, template_file: str | None = None) -> Path:
    """A copy of the checkpoint `src` with a tokenizer.json, tokenizer_config.json (and a template)."""
    ref.copy_checkpoint(src, dst)
    _hf_tokenizer(kind).save(str(dst / "tokenizer.json"))
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config |= {"mask_token": "<mask>", "add_bos_token": True, "chat_template": TEMPLATE}
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    if template_file is not None:
        (dst / "chat_template.jinja").write_text(template_file)
    return dst


@pytest.fixture(scope="module")
def converted(reference_models, tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """name -> (HF dir with a tokenizer, its GGUF), for e2b (Gemma 4), its assistant and gemma3."""
    root = tmp_path_factory.mktemp("convert_tokenizer")
    made: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            src = (
                reference_models.assistant("e2b", ordered=True)
                if name == "assistant"
                else reference_models.target(name)
            ).path
            hf_dir = _with_tokenizer(src, root / name, "gemma3" if name == "gemma3" else "gemma4")
            made[name] = hf_dir, convert_hf_to_gguf(hf_dir, root / f"{name}.gguf")
        return made[name]

    return get


@pytest.mark.parametrize("name", ["e2b", "assistant", "gemma3"])
def test_tokenizer_from_the_gguf_encodes_like_tokenizer_json(converted, name):
    hf_dir, path = converted(name)
    theirs, ours = Tokenizer.from_file(str(hf_dir / "tokenizer.json")), load_tokenizer(path)
    for text in TEXTS:
        assert ours.encode(text, add_bos=False) == theirs.encode(text, add_special_tokens=False).ids, text
        ids = theirs.encode(text).ids
        assert ours.decode(ids, skip_special=False) == theirs.decode(ids, skip_special_tokens=False)


def test_tool_and_channel_tokens_stay_visible_in_output_as_llama_cpp_types_them(converted):
    _, path = converted("e2b")
    tokenizer = load_tokenizer(path)
    ids = tokenizer.encode('<|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|><turn|>', add_bos=False)
    assert tokenizer.decode(ids) == '<|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|>'  # <turn|> is control


@pytest.mark.parametrize("name", ["e2b", "gemma3"])
def test_bos_policy_stop_ids_and_template_match_the_hf_directory(converted, name):
    hf_dir, path = converted(name)
    from_hf, from_gguf = load_tokenizer(hf_dir), load_tokenizer(path)
    assert [from_gguf.encode(t) for t in TEXTS] == [from_hf.encode(t) for t in TEXTS]
    assert (from_gguf.bos_id, from_gguf.eos_id, from_gguf.pad_id) == (2, 1, 0)
    assert from_gguf.stop_ids == from_hf.stop_ids
    assert from_gguf.chat_template == from_hf.chat_template == TEMPLATE


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}


def test_gemma4_keys_are_llama_cpps_gemma4_vocabulary(converted):
    hf_dir, path = converted("e2b")
    keys = _fields(path)
    table = json.loads((hf_dir / "tokenizer.json").read_text())
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    assert keys["tokenizer.ggml.model"] == "gemma4" and len(tokens) == ref.VOCAB
    assert keys["tokenizer.ggml.merges"] == [" ".join(m) for m in table["model"]["merges"]]
    assert set(keys["tokenizer.ggml.scores"]) == {-1000.0}
    kinds = dict(zip(tokens, types, strict=True))
    assert {kinds[t] for t in ("<bos>", "<eos>", "<|turn>", "<turn|>")} == {TokenType.CONTROL}
    assert {kinds[t] for t in ("<|tool_call>", "<tool_call|>", '<|"|>')} == {TokenType.USER_DEFINED}
    assert {kinds[t] for t in BYTES} == {TokenType.BYTE} and kinds["▁the"] == TokenType.NORMAL
    n_hf = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size()
    assert tokens[:n_hf] == [
        Tokenizer.from_file(str(hf_dir / "tokenizer.json")).id_to_token(i) for i in range(n_hf)
    ]
    assert tokens[n_hf:] == [f"[PAD{i}]" for i in range(n_hf, ref.VOCAB)]  # padded as llama.cpp pads
    assert set(types[n_hf:]) == {TokenType.UNUSED}
    assert keys["tokenizer.ggml.bos_token_id"] == 2 and keys["tokenizer.ggml.eos_token_id"] == 1
    assert keys["tokenizer.ggml.padding_token_id"] == 0 and keys["tokenizer.ggml.unknown_token_id"] == 3
    assert keys["tokenizer.ggml.add_bos_token"] is True and keys["tokenizer.ggml.add_space_prefix"] is False
    assert keys["tokenizer.chat_template"] == TEMPLATE


def test_gemma3_keys_are_a_sentencepiece_style_vocabulary(converted):
    _, path = converted("gemma3")
    keys = _fields(path)
    assert keys["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in keys
    kinds = dict(zip(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"], strict=True))
    assert {kinds[t] for t in NEWLINE_RUNS} == {TokenType.USER_DEFINED}
    assert kinds["<|tool_call>"] == TokenType.CONTROL  # only Gemma 4 shows the tool tokens
    scores = dict(zip(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.scores"], strict=True))
    assert scores["▁t"] > scores["▁the"]  # a token made by an earlier merge scores higher


def test_chat_template_jinja_wins_over_tokenizer_config(reference_models, tmp_path):
    jinja = "{% for m in messages %}{{ m.content }}{% endfor %}"
    hf_dir = _with_tokenizer(
        reference_models.target("e2b").path, tmp_path / "hf", "gemma4", template_file=jinja
    )
    path = convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf")
    assert load_tokenizer(path).chat_template == jinja == load_tokenizer(hf_dir).chat_template


def test_checkpoint_without_a_tokenizer_converts_without_tokenizer_keys(reference_models, tmp_path):
    path = convert_hf_to_gguf(reference_models.target("gemma3").path, tmp_path / "out.gguf")
    assert "tokenizer.ggml.tokens" not in read_gguf_metadata(path, prefix="tokenizer.")


def test_config_json_special_ids_win_over_the_tokenizers(reference_models, tmp_path):
    hf_dir = _with_tokenizer(reference_models.target("e2b").path, tmp_path / "hf", "gemma4")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config | {"eos_token": "<turn|>"}))
    keys = read_gguf_metadata(convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf"), prefix="tokenizer.")
    assert keys["tokenizer.ggml.eos_token_id"] == 1  # config.json's eos_token_id, not <turn|> (6)


def _extra(data: dict, n: int) -> dict[str, int]:
    """Tokens that grow the table to `n`."""
    return {f"extra{i}": i for i in range(len(data["model"]["vocab"]), n)}


def _space_in_merge(data: dict) -> None:
    n = len(data["model"]["vocab"])
    data["model"]["vocab"].update({" b": n, "a b": n + 1})
    data["model"]["merges"].append(["a", " b"])


def _edit_tokenizer_json(hf_dir: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    edit(data)
    (hf_dir / "tokenizer.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"].update(byte_fallback=False), "a BPE tokenizer without byte fallback"),
        (lambda d: d["model"].update(type="Unigram"), "a Unigram tokenizer"),
        (lambda d: d["model"]["vocab"].update(_extra(d, ref.VOCAB + 1)), f"{ref.VOCAB + 1} tokens, but"),
        (lambda d: d["model"]["vocab"].update({"gap": 300}), "no token has id"),
        (_space_in_merge, "has a space inside a token"),
        (lambda d: d["model"]["merges"].append(["▁", "nope"]), "the tokenizers library cannot read it"),
    ],
    ids=["no-byte-fallback", "unigram", "too-many-tokens", "gap", "space-in-merge", "unreadable"],
)
def test_a_tokenizer_gemma_mtp_cannot_embed_is_one_error_naming_the_file(
    reference_models, tmp_path, edit, message
):
    hf_dir = _with_tokenizer(reference_models.target("e2b").path, tmp_path / "hf", "gemma4")
    _edit_tokenizer_json(hf_dir, edit)
    with pytest.raises(ModelFormatError, match=rf"tokenizer\.json: .*{message}"):
        convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_tokenizer_json_that_is_not_json_is_one_error(reference_models, tmp_path):
    hf_dir = _with_tokenizer(reference_models.target("e2b").path, tmp_path / "hf", "gemma4")
    (hf_dir / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json: not valid JSON"):
        convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf")


# ------------------------------------------------------------------------------------- real vocabularies


def _as_hf_dir(tokenizer: GemmaTokenizer, dst: Path) -> Path:
    """A tokenizer saved as a HF tokenizer.json + tokenizer_config.json."""
    dst.mkdir()
    tokenizer.backend.save(str(dst / "tokenizer.json"))
    config = {**tokenizer.special_tokens(), "add_bos_token": tokenizer.add_bos}
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def _round_trip(original: GemmaTokenizer, tmp_path: Path, family: str) -> Path:
    """`original` -> HF files -> our tokenizer entries -> a GGUF holding only them."""
    hf_dir = _as_hf_dir(original, tmp_path / "hf")
    config = types.SimpleNamespace(family=family, vocab_size=262_144)
    return write_gguf(tmp_path / "out.gguf", family, tokenizer_entries(hf_dir, config), [])


def test_real_gemma4_vocabulary_gives_llama_cpps_keys(tmp_path):
    """llama.cpp's ggml-vocab-gemma-4.gguf, as a HF tokenizer.json, converts back key for key."""
    original = fetch(lambda: llama_cpp_vocab("gemma-4"))
    out = _round_trip(load_tokenizer(original), tmp_path, "gemma4")
    theirs, ours = (read_gguf_metadata(p, prefix="tokenizer.") for p in (original, out))
    assert set(ours) == set(theirs) - {"tokenizer.ggml.mask_token_id"}  # <mask> is not a special we read
    for key in ours:
        same = np.array_equal if isinstance(ours[key], np.ndarray) else (lambda a, b: a == b)
        assert same(ours[key], theirs[key]), key


def test_real_gemma3_vocabulary_keeps_its_merge_order(tmp_path):
    """The Gemma 3 270M's SentencePiece scores -> merges -> our scores -> the same merges."""
    original = load_tokenizer(fetch(gemma3_270m_gguf))
    out = _round_trip(original, tmp_path, "gemma3")
    tables = [json.loads(t.backend.to_str()) for t in (original, load_tokenizer(out))]
    assert tables[0]["added_tokens"] == tables[1]["added_tokens"]
    assert tables[0]["model"] == tables[1]["model"]  # vocabulary and merges, in order
