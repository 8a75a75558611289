"""`gemma-mtp convert`, `inspect`, `diff` and `pair` on tiny files made from the reference
checkpoints."""

from __future__ import annotations

import json

import gguf
import pytest
from asset_helpers import gemma3_270m
from gguf import GGUFValueType
from test_gguf_tools_helpers import LEAKS, run_cli, with_metadata

from gemma_mtp import demo
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.gguf import open_gguf
from gemma_mtp.gguf.keys import DRAFTER_LAYOUTS
from gemma_mtp.gguf.metadata import config_from_gguf
from gemma_mtp.gguf.writer import Entry
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.tools.diff import diff_gguf
from gemma_mtp.tools.inspect import inspect_gguf
from gemma_mtp.tools.pair import pair_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")
TOKENS = [f"tok{i}" for i in range(256)]


@pytest.fixture(scope="module")
def files(reference_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    e2b = reference_models.target("e2b").path
    drafter = reference_models.assistant("e2b", ordered=True).path
    return {
        "gemma3": convert_hf_to_gguf(reference_models.target("gemma3").path, root / "gemma3.gguf"),
        "gemma3_q8": convert_hf_to_gguf(
            reference_models.target("gemma3").path, root / "g3q8.gguf", out_type="Q8_0"
        ),
        "e2b": convert_hf_to_gguf(e2b, root / "e2b.gguf"),
        "drafter": convert_hf_to_gguf(drafter, root / "drafter.gguf", keep_centroids=True),
        "drafter_legacy": convert_hf_to_gguf(drafter, root / "drafter.legacy.gguf", layout="legacy"),
        "dense31b_drafter": convert_hf_to_gguf(
            reference_models.assistant("dense31b", ordered=False).path, root / "d31.gguf"
        ),
    }


def _json(capsys, argv: list[str], code: int = 0) -> dict:
    assert run_cli(argv) == code
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------- convert


def test_convert_hf_dir_with_outtype_loads_back_and_reads_with_gguf_reader(
    reference_models, tmp_path, capsys
):
    out = tmp_path / "e2b.q8.gguf"
    assert run_cli(["convert", str(reference_models.target("e2b").path), str(out), "--outtype", "q8_0"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (gemma4, ")
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 7
    load_gguf_model(out, dtype="float32")


@pytest.mark.parametrize("layout", ["legacy", "ik"])
def test_convert_drafter_gguf_to_another_layout(files, tmp_path, layout):
    out = tmp_path / f"drafter.{layout}.gguf"
    assert run_cli(["convert", str(files["drafter"]), str(out), "--layout", layout]) == 0
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == DRAFTER_LAYOUTS[layout].arch
    assert load_gguf_model(out, dtype="float32")[1] == load_gguf_model(files["drafter"], dtype="float32")[1]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["{drafter}", "{out}", "--outtype", "f16"], 2, "use gemma-mtp quantize"),
        (["{drafter}", "{drafter}"], 2, "OUT is the input file"),
        (["{missing}", "{out}"], 1, "no such file or directory"),
        (["{gemma3}", "{out}", "--layout", "ik"], 1, "is not a drafter"),
    ],
    ids=["outtype-on-gguf", "out-is-in", "missing", "target-gguf"],
)
def test_bad_convert_arguments_give_one_clear_error(files, tmp_path, capsys, argv, code, message):
    names = {**files, "missing": tmp_path / "nope", "out": tmp_path / "out.gguf"}
    assert run_cli(["convert", *[a.format(**names) for a in argv]]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------- inspect


def test_inspect_json_describes_a_target(files, capsys):
    info = _json(capsys, ["inspect", str(files["gemma3"]), "--json"])
    assert (info["architecture"], info["kind"], info["layout"], info["file_type"]) == (
        "gemma3",
        "target",
        None,
        "F32",
    )
    hp = info["hyperparameters"]
    assert (hp["family"], hp["vocab_size"], hp["hidden_size"], hp["num_layers"]) == ("gemma3", 256, 64, 6)
    assert hp["layers"] == {"sliding_attention": 4, "full_attention": 2} and hp["head_dim"] == {
        "sliding_attention": 16,
        "full_attention": 16,
    }
    assert info["tensors"]["by_type"]["F32"]["count"] == info["tensors"]["count"]
    assert info["tensors"]["bits_per_weight"] == 32.0 and info["leaks"] == []


def test_inspect_reports_bits_per_weight_of_a_quantized_file(files):
    info = inspect_gguf(files["gemma3_q8"])
    t = info["tensors"]
    assert info["file_type"] == "Q8_0" and set(t["by_type"]) >= {"Q8_0", "F32"}
    assert t["bits_per_weight"] == round(t["bytes"] * 8 / t["parameters"], 3)
    assert 8.5 <= t["bits_per_weight"] < 32  # Q8_0 is 8.5 bits; the F32 norms add a little
    assert sum(row["bytes"] for row in t["list"]) == t["bytes"]


@pytest.mark.parametrize(("name", "layout"), [("drafter", "mainline"), ("drafter_legacy", "legacy")])
def test_inspect_names_a_drafters_layout_and_backbone(files, name, layout):
    info = inspect_gguf(files[name])
    assert (info["kind"], info["layout"]) == ("drafter", layout)
    hp = info["hyperparameters"]
    assert hp["backbone_hidden_size"] == 64 and hp["use_ordered_embeddings"] and hp["num_centroids"] == 16


def test_inspect_lists_leaks(files, tmp_path, capsys):
    leaky = with_metadata(files["gemma3"], tmp_path / "leaky.gguf", LEAKS)
    info = inspect_gguf(leaky)
    assert {leak["key"] for leak in info["leaks"]} == set(LEAKS)
    assert run_cli(["inspect", str(leaky)]) == 0
    out = capsys.readouterr().out
    assert "leak          quantize.imatrix.file = '/home/alice/llama.cpp/imatrix-gemma.dat'" in out


def test_inspect_text_shows_each_section(files, capsys):
    assert run_cli(["inspect", str(files["drafter"]), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "architecture  gemma4-assistant (drafter, mainline layout)" in out
    assert "  backbone_hidden_size      64" in out and "leaks         none" in out
    assert "masked_embd_ordering" in out and "I32" in out


def test_inspect_of_an_unsupported_architecture_still_shows_the_file(files, tmp_path):
    from test_gguf_helpers import rewrite_gguf

    foreign = rewrite_gguf(files["gemma3"], tmp_path / "llama.gguf", arch="llama")
    info = inspect_gguf(foreign)
    assert info["kind"] == "unsupported" and info["hyperparameters"] is None
    assert "not supported" in info["notices"][0] and info["tensors"]["count"] > 0


# ------------------------------------------------------------------------------------- diff


def test_diff_shows_keys_only_in_one_file_and_different_values(files, tmp_path, capsys):
    b = with_metadata(files["gemma3"], tmp_path / "b.gguf", LEAKS, drop=("general.name",))
    d = diff_gguf(files["gemma3"], b)["metadata"]
    assert [row["key"] for row in d["only_in_a"]] == ["general.name"]
    assert [row["key"] for row in d["only_in_b"]] == list(LEAKS)
    assert d["different"] == []
    assert run_cli(["diff", str(files["gemma3"]), str(b)]) == 0
    out = capsys.readouterr().out
    assert "  only in A  general.name = 'Gemma3'" in out  # llama.cpp's title case
    assert "  only in B  quantize.imatrix.file = '/home/alice/llama.cpp/imatrix-gemma.dat'" in out
    assert "tensors: identical" in out


def test_diff_of_two_quantizations_shows_file_type_and_tensor_types(files, capsys):
    d = _json(capsys, ["diff", str(files["gemma3"]), str(files["gemma3_q8"]), "--json"])
    assert d["metadata"]["different"] == [{"key": "general.file_type", "a": "0", "b": "7"}]
    changed = {row["name"]: (row["a"], row["b"]) for row in d["tensors"]["different"]}
    assert changed["token_embd.weight"] == ("F32 [256, 64]", "Q8_0 [256, 64]")


def test_diff_of_a_file_with_itself_is_empty(files, capsys):
    assert run_cli(["diff", str(files["e2b"]), str(files["e2b"])]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["metadata: identical", "tensors: identical"]


# ------------------------------------------------------------------------------------- pair

RULES = [
    "target",
    "assistant",
    "family",
    "backbone width",
    "vocabulary size",
    "head dim (sliding_attention)",
    "KV heads (sliding_attention)",
    "head dim (full_attention)",
    "KV heads (full_attention)",
]


def runtime_verdict(target_path, draft_path) -> str | None:
    """What loading the pair does: None when the runtime runs it, else its refusal."""
    from gemma_mtp.pairing import check_pair as runtime_check_pair

    target, _, _ = config_from_gguf(open_gguf(target_path))
    draft, _, _ = config_from_gguf(open_gguf(draft_path))
    try:
        runtime_check_pair(target, draft)
    except ModelFormatError as exc:
        return str(exc)
    return None


def test_pair_of_a_target_and_its_drafter_is_compatible(files, capsys):
    assert run_cli(["pair", str(files["e2b"]), str(files["drafter_legacy"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "compatible: the drafter can draft for this target"
    assert lines[0].split() == ["ok", "target", "a", "gemma4", "target"]
    report = pair_gguf(files["e2b"], files["drafter_legacy"])
    assert {c.name: c.ok for c in report.checks} == {
        **dict.fromkeys(RULES, True),
        "drafter layout": None,
        "drafter head": None,
        "required target": None,  # legacy files name it; a note, the runtime does not read it
        "tokenizer": None,  # converted files carry no tokenizer: not compared
        "sliding window": None,
    }


def test_pair_accepts_the_demo_pair_the_runtime_runs(capsys):
    """Gemma 3 270M with its trained Gemma 4 assistant: `run` drafts with it, so `pair` accepts it
    (it used to say "MTP drafters pair with gemma4 targets")."""
    target, drafter = gemma3_270m(), demo.demo_drafter()
    assert runtime_verdict(target, drafter) is None
    assert run_cli(["pair", str(target), str(drafter)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "compatible: the drafter can draft for this target"
    assert "FAIL" not in out
    report = pair_gguf(target, drafter)
    assert report.compatible and [c.name for c in report.checks if c.ok is True] == RULES


@pytest.mark.parametrize(
    ("target", "draft"),
    [
        ("e2b", "drafter"),
        ("e2b", "drafter_legacy"),
        ("e2b", "dense31b_drafter"),
        ("gemma3", "drafter"),
        ("e2b", "gemma3"),
        ("drafter", "drafter"),
    ],
)
def test_pair_verdict_is_the_runtimes(files, target, draft):
    report = pair_gguf(files[target], files[draft])
    if draft == "gemma3" or target == "drafter":  # not a pair at all: the loader refuses before
        assert not report.compatible
        return
    refusal = runtime_verdict(files[target], files[draft])
    assert report.compatible == (refusal is None)
    if refusal is not None:
        assert refusal in report.verdict


def test_pair_reads_the_drafters_kv_through_the_targets_kv_heads(files, capsys):
    """The assistant has no KV of its own: its query heads must share the target's KV heads, and
    its own head_count_kv is not a rule (the runtime runs such a pair)."""
    report = _json(capsys, ["pair", str(files["e2b"]), str(files["dense31b_drafter"]), "--json"])
    kv = {c["name"]: c for c in report["checks"] if c["name"].startswith("KV heads")}
    assert all(c["ok"] for c in kv.values()) and report["compatible"]


def test_pair_with_query_heads_that_cannot_share_the_targets_kv_heads_fails(files, tmp_path):
    key = "gemma4-assistant.attention.head_count"
    heads = open_gguf(files["drafter"]).value(key)
    kv = open_gguf(files["e2b"]).value("gemma4.attention.head_count_kv")
    kv = max(kv) if isinstance(kv, list) else kv
    assert kv > 1
    odd = with_metadata(
        files["drafter"], tmp_path / "d.gguf", {key: Entry(key, heads * kv + 1, GGUFValueType.UINT32)}
    )
    report = pair_gguf(files["e2b"], odd)
    assert not report.compatible and "head count mismatch" in report.verdict


def test_pair_notes_different_embedded_tokenizers_with_a_warning(files, tmp_path, capsys):
    target = with_metadata(files["e2b"], tmp_path / "t.gguf", {"tokenizer.ggml.tokens": TOKENS})
    same = with_metadata(files["drafter"], tmp_path / "d1.gguf", {"tokenizer.ggml.tokens": TOKENS})
    other = with_metadata(
        files["drafter"], tmp_path / "d2.gguf", {"tokenizer.ggml.tokens": TOKENS[:-1] + ["x"]}
    )
    assert next(c for c in pair_gguf(target, same).checks if c.name == "tokenizer").ok is True
    report = pair_gguf(target, other)
    assert report.compatible  # the runtime runs it (losslessly); drafting just pays less
    assert len(report.warnings) == 1 and "first difference at token 255" in report.warnings[0]
    assert run_cli(["pair", str(target), str(other)]) == 0
    assert "warning: token tables differ" in capsys.readouterr().out


def test_pair_with_a_different_backbone_width_fails_with_exit_1(files, tmp_path, capsys):
    """A really incompatible pair: the drafter expects another hidden size."""
    key = "gemma4-assistant.embedding_length_out"
    wrong = with_metadata(files["drafter"], tmp_path / "d.gguf", {key: Entry(key, 32, GGUFValueType.UINT32)})
    report = _json(capsys, ["pair", str(files["e2b"]), str(wrong), "--json"], code=1)
    assert not report["compatible"]
    failed = [c["name"] for c in report["checks"] if c["ok"] is False]
    assert failed == ["backbone width"]
    assert report["verdict"].startswith(
        "not compatible: backbone width: hidden size mismatch: the assistant expects a backbone of "
        "width 32, the target has 64"
    )
    assert runtime_verdict(files["e2b"], wrong) in report["verdict"]


def test_pair_with_a_target_as_drafter_says_so(files):
    report = pair_gguf(files["e2b"], files["gemma3"])
    assert not report.compatible and "not an MTP assistant" in report.verdict


def test_pair_with_a_drafter_as_target_says_so(files):
    report = pair_gguf(files["drafter"], files["drafter"])
    assert not report.compatible and "the target is an MTP assistant (drafter)" in report.verdict


def test_pair_reads_each_file_once_with_one_clear_error_for_a_missing_one(files, tmp_path, capsys):
    assert run_cli(["pair", str(files["e2b"]), str(tmp_path / "none.gguf")]) == 1
    err = capsys.readouterr().err
    assert "none.gguf: no such file" in err and err.count("\n") == 1
    assert open_gguf(files["e2b"]).arch == "gemma4"
