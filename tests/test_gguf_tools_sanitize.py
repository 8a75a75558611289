"""`gemma-mtp sanitize`: host paths leave the metadata, nothing else changes (tensor bytes, other
keys, their order), kv_count drops by exactly the number removed; --check and --in-place."""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType
from test_gguf_helpers import rewrite_gguf
from test_gguf_tools_helpers import LEAKS, NOT_LEAKS, run_cli, with_metadata

from gemma_mtp.errors import UsageError
from gemma_mtp.gguf import open_gguf
from gemma_mtp.gguf.imatrix import ImatrixData, read_imatrix, write_imatrix
from gemma_mtp.gguf.writer import Entry, LazyTensor, write_gguf_lazy
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.tools.sanitize import dataset_name, is_host_path, sanitize_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")
IMATRIX = {k: v for k, v in LEAKS.items() if k.startswith("quantize.imatrix.")}


@pytest.fixture(scope="module")
def clean(reference_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("sanitize")
    return convert_hf_to_gguf(reference_models.target("gemma3").path, root / "clean.gguf", out_type="Q8_0")


@pytest.fixture
def leaky(clean, tmp_path):
    """The clean file as llama-quantize leaves it: two imatrix paths (and one more host path)."""
    return with_metadata(clean, tmp_path / "leaky.gguf", {**IMATRIX, **NOT_LEAKS})


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imatrix_keys_are_removed_tensors_stay_byte_identical_and_kv_count_drops_by_two(leaky, tmp_path):
    before = _digest(leaky)
    out = tmp_path / "clean.gguf"
    result = sanitize_gguf(leaky, out)
    src, dst = gguf.GGUFReader(leaky), gguf.GGUFReader(out)
    kv = {r: int(r.fields["GGUF.kv_count"].contents()) for r in (src, dst)}
    assert kv[dst] == kv[src] - 2 and result.kv_count_after == result.kv_count_before - 2
    assert not set(IMATRIX) & set(dst.fields)
    for a, b in zip(src.tensors, dst.tensors, strict=True):
        assert (a.name, a.tensor_type, a.data.tobytes()) == (b.name, b.tensor_type, b.data.tobytes())
    assert _digest(leaky) == before  # the input is untouched


def test_other_keys_keep_their_values_types_and_order(leaky, tmp_path):
    out = sanitize_gguf(leaky, tmp_path / "clean.gguf").path
    src, dst = open_gguf(leaky), open_gguf(out)
    kept = [k for k in src.fields if k not in IMATRIX]
    assert list(dst.fields) == kept
    assert all(src.fields[k] == dst.fields[k] for k in kept)


def test_any_string_holding_an_absolute_host_path_is_removed(clean, tmp_path):
    leaky = with_metadata(
        clean, tmp_path / "leaky.gguf", {**LEAKS, **NOT_LEAKS, "general.tags": ["a", "/mnt/x"]}
    )
    result = sanitize_gguf(leaky, tmp_path / "clean.gguf")
    assert {leak.key for leak in result.removed} == {*LEAKS, "general.tags"}
    assert set(NOT_LEAKS) <= set(open_gguf(result.path).fields)


def test_sanitized_file_loads_with_the_same_config(leaky, clean, tmp_path):
    out = sanitize_gguf(leaky, tmp_path / "clean.gguf").path
    assert load_gguf_model(out, dtype="float32")[1] == load_gguf_model(clean, dtype="float32")[1]


def test_cli_lists_each_removed_key_on_its_own_line(leaky, tmp_path, capsys):
    n_kv = len(open_gguf(leaky).fields)
    assert run_cli(["sanitize", str(leaky), str(tmp_path / "out.gguf")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines[:-1]] == [f"removed {key}" for key in IMATRIX]
    for key, value in IMATRIX.items():
        assert f"removed {key} = {value!r} (" in "\n".join(lines)
    assert lines[-1] == f"wrote {tmp_path / 'out.gguf'} (kv_count {n_kv} -> {n_kv - 2})"


def test_check_exits_1_on_leaks_and_changes_nothing(leaky, capsys):
    before = _digest(leaky)
    assert run_cli(["sanitize", str(leaky), "--check"]) == 1
    out = capsys.readouterr().out
    assert "found quantize.imatrix.file" in out and "2 leaking keys" in out
    assert _digest(leaky) == before


def test_check_exits_0_on_a_clean_file(clean, capsys):
    assert run_cli(["sanitize", str(clean), "--check"]) == 0
    assert "no leaks" in capsys.readouterr().out


def test_in_place_rewrites_the_input(leaky, tmp_path, capsys):
    n_before = len(open_gguf(leaky).fields)
    assert run_cli(["sanitize", str(leaky), "--in-place"]) == 0
    assert len(open_gguf(leaky).fields) == n_before - 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left
    assert run_cli(["sanitize", str(leaky), "--in-place"]) == 0
    assert "nothing changed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["{out}"], ["--in-place"], ["--check"]], ids=["out", "in-place", "check"])
def test_wrong_architecture_exits_1_naming_it_and_the_supported_ones(leaky, tmp_path, capsys, argv):
    foreign = rewrite_gguf(leaky, tmp_path / "llama.gguf", arch="llama")
    before = _digest(foreign)
    argv = [a.format(out=tmp_path / "out.gguf") for a in argv]
    assert run_cli(["sanitize", str(foreign), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {foreign}: general.architecture 'llama' is not") and err.count("\n") == 1
    assert "gemma4, gemma3, gemma4-assistant, gemma4_assistant, gemma4_mtp" in err and "--any-arch" in err
    assert not (tmp_path / "out.gguf").exists() and _digest(foreign) == before


def test_any_arch_sanitizes_a_foreign_architecture(leaky, tmp_path, capsys):
    foreign = rewrite_gguf(leaky, tmp_path / "llama.gguf", arch="llama")
    assert run_cli(["sanitize", str(foreign), str(tmp_path / "out.gguf"), "--any-arch"]) == 0
    assert open_gguf(tmp_path / "out.gguf").arch == "llama"
    result = sanitize_gguf(foreign, tmp_path / "lib.gguf", any_arch=True)
    assert {leak.key for leak in result.removed} == set(IMATRIX)


@pytest.mark.parametrize("arch", ["gemma4_assistant", "gemma4_mtp", "gemma4-assistant"])
def test_every_drafter_layout_architecture_is_accepted(leaky, tmp_path, arch):
    # the header surgery does not parse hyperparameters, so a relabelled target stands in
    drafter = rewrite_gguf(leaky, tmp_path / f"{arch}.gguf", arch=arch)
    assert len(sanitize_gguf(drafter, tmp_path / "out.gguf").removed) == 2


def test_custom_alignment_is_kept(clean, tmp_path):
    gf = open_gguf(clean)
    entries = [Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items()]
    entries += [Entry("general.alignment", 64, GGUFValueType.UINT32)]
    entries += [Entry(k, v, GGUFValueType.STRING) for k, v in IMATRIX.items()]
    tensors = [
        LazyTensor(n, t.data.shape[:-1] + (t.shape[0],), t.tensor_type, t.n_bytes, lambda t=t: t.data)
        for n, t in gf.tensors.items()
    ]
    aligned = write_gguf_lazy(tmp_path / "aligned.gguf", gf.arch, entries, tensors, alignment=64)
    out = sanitize_gguf(aligned, tmp_path / "out.gguf").path
    a, b = open_gguf(aligned), open_gguf(out)
    assert all(t.data_offset % 64 == 0 for t in b.tensors.values())
    assert all(np.array_equal(a.tensors[n].data, b.tensors[n].data) for n in a.tensors)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{leaky}"], "sanitize needs OUT or --in-place"),
        (["{leaky}", "{out}", "--in-place"], "give OUT or --in-place, not both"),
        (["{leaky}", "{leaky}"], "OUT is the input file"),
        (["{leaky}", "{out}", "--check"], "--check changes nothing"),
    ],
    ids=["no-out", "both", "out-is-in", "check-with-out"],
)
def test_usage_errors_exit_2_with_one_line(leaky, tmp_path, capsys, argv, message):
    argv = [a.format(leaky=leaky, out=tmp_path / "out.gguf") for a in argv]
    assert run_cli(["sanitize", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["truncated", "not-gguf", "missing"])
def test_damaged_inputs_exit_1_with_one_line(clean, tmp_path, capsys, damage):
    bad = tmp_path / "bad.gguf"
    if damage == "truncated":
        bad.write_bytes(clean.read_bytes()[:200])
    elif damage == "not-gguf":
        bad.write_text("just some text, not a model\n")
    assert run_cli(["sanitize", str(bad), str(tmp_path / "out.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and err.count("\n") == 1
    assert not (tmp_path / "out.gguf").exists()


def test_library_refuses_out_and_in_place_together(leaky, tmp_path):
    with pytest.raises(UsageError):
        sanitize_gguf(leaky, tmp_path / "o.gguf", in_place=True)


@pytest.mark.parametrize(
    ("value", "leak"),
    [
        ("/home/alice/imatrix.dat", True),
        ("/Users/Bob Smith/models/x.gguf", True),
        ("C:\\Users\\carol\\imatrix.dat", True),
        ("\\\\server\\share\\calib.txt", True),
        ("file:///srv/models/x.gguf", True),
        ("computed on /home/dave/wiki.txt", True),
        ("imatrix.dat", False),
        ("https://huggingface.co/google/gemma-3-270m", False),
        ("{% for m in messages %}</start_of_turn>\n{% endfor %}", False),
        ("Gemma 3 270m", False),
        ("a/b/c", False),
    ],
)
def test_host_path_detection(value, leak):
    assert is_host_path(value) is leak


# ------------------------------------------------------------------------------ imatrix files


@pytest.fixture
def leaky_imatrix(tmp_path):
    """An importance matrix as llama-imatrix writes it: the dataset's absolute path recorded."""
    data = ImatrixData(
        entries={
            "blk.0.attn_q.weight": (np.arange(8, dtype=np.float32).reshape(1, 8), np.array([5], np.float32)),
            "blk.0.ffn_down_exps.weight": (np.ones((2, 4), np.float32), np.array([3, 0], np.float32)),
        },
        datasets=["/home/alice/calib/wiki.train.raw", "C:\\Users\\bob\\more.txt", "plain.txt"],
        chunk_count=7,
        chunk_size=512,
    )
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, data)
    return path, data


def test_imatrix_datasets_keep_only_base_names_and_nothing_else_changes(leaky_imatrix, tmp_path):
    path, data = leaky_imatrix
    result = sanitize_gguf(path, tmp_path / "clean.gguf")
    assert [leak.key for leak in result.removed] == ["imatrix.datasets"]
    assert result.removed[0].value == "/home/alice/calib/wiki.train.raw"
    assert result.kv_count_after == result.kv_count_before == 4
    clean = read_imatrix(result.path)
    assert clean.datasets == ["wiki.train.raw", "more.txt", "plain.txt"]
    assert (clean.chunk_count, clean.chunk_size) == (7, 512) and clean.entries.keys() == data.entries.keys()
    for name, (sums, counts) in data.entries.items():
        assert np.array_equal(clean.entries[name][0], sums) and np.array_equal(clean.entries[name][1], counts)
    assert b"/home/alice" not in result.path.read_bytes() and b"Users" not in result.path.read_bytes()


def test_imatrix_check_in_place_and_cli(leaky_imatrix, capsys):
    path, _ = leaky_imatrix
    before = _digest(path)
    assert run_cli(["sanitize", str(path), "--check"]) == 1
    assert "found imatrix.datasets = '/home/alice/calib/wiki.train.raw'" in capsys.readouterr().out
    assert _digest(path) == before
    assert run_cli(["sanitize", str(path), "--in-place"]) == 0
    assert read_imatrix(path).datasets == ["wiki.train.raw", "more.txt", "plain.txt"]
    assert run_cli(["sanitize", str(path), "--check"]) == 0
    assert "no leaks" in capsys.readouterr().out


def test_a_clean_imatrix_has_no_leaks(leaky_imatrix, tmp_path):
    path, data = leaky_imatrix
    write_imatrix(path, ImatrixData(entries=data.entries, datasets=["gemma-mtp:bench-prompts"]))
    assert sanitize_gguf(path, check=True).removed == []


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("/home/alice/wiki.txt", "wiki.txt"),
        ("../data/calib.txt", "calib.txt"),
        ("C:\\Users\\carol\\imatrix.txt", "imatrix.txt"),
        ("file:///srv/x/y.txt", "y.txt"),
        ("wiki.txt", "wiki.txt"),
        ("gemma-mtp:bench-prompts", "gemma-mtp:bench-prompts"),
    ],
)
def test_dataset_name_is_the_base_name(value, name):
    assert dataset_name(value) == name
