"""What the GGUF tools do with the file system: the format of a path decided by its content, file
modes of outputs (the umask for new files, the old mode for in-place edits), missing output
folders refused, directories and permission problems each said in one sentence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from deny_access import deny
from test_gguf_tools_helpers import LEAKS, run_cli, with_metadata

from gemma_mtp.errors import GemmaMTPError, ModelFormatError
from gemma_mtp.gguf import model_format, open_gguf
from gemma_mtp.gguf.atomic import atomic_write
from gemma_mtp.gguf.formats import GGUF, HF_DIR, is_gguf
from gemma_mtp.tools.convert import convert_drafter_layout, convert_hf_to_gguf
from gemma_mtp.tools.quantize import quantize_gguf
from gemma_mtp.tools.sanitize import sanitize_gguf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def files(reference_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    target = convert_hf_to_gguf(reference_models.target("gemma3").path, root / "t.gguf")
    return {
        "hf": reference_models.target("gemma3").path,
        "target": target,
        "leaky": with_metadata(target, root / "leaky.gguf", LEAKS),
        "drafter": convert_hf_to_gguf(reference_models.assistant("e2b", ordered=True).path, root / "d.gguf"),
    }


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back whatever happens."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------------------- format by content


def test_format_is_decided_by_magic_bytes_not_by_the_suffix(files, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(files["target"].read_bytes())
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    assert model_format(renamed) == GGUF and is_gguf(renamed)
    assert model_format(files["hf"]) == HF_DIR and not is_gguf(files["hf"])
    with pytest.raises(ModelFormatError, match="fake.gguf: not a GGUF file .* magic bytes"):
        model_format(fake)
    with pytest.raises(ModelFormatError, match="no such file or directory"):
        model_format(tmp_path / "none")
    assert run_cli(["inspect", str(renamed)]) == 0  # the tools go by content too


# ------------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_outputs_honour_the_umask(files, tmp_path, umask, mask, expected):
    """llama.cpp's tools write 0o666 & ~umask; we used to write 0o600 whatever the umask."""
    umask(mask)
    outputs = [
        sanitize_gguf(files["leaky"], tmp_path / "s.gguf").path,
        quantize_gguf(files["target"], tmp_path / "q.gguf", "Q8_0").path,
        convert_hf_to_gguf(files["hf"], tmp_path / "c.gguf"),
        convert_drafter_layout(files["drafter"], tmp_path / "l.gguf", "ik"),
    ]
    assert {p.name: oct(mode(p)) for p in outputs} == {p.name: oct(expected) for p in outputs}


@pytest.mark.parametrize("original", [0o644, 0o444, 0o640])
def test_in_place_sanitize_keeps_the_files_mode(files, tmp_path, umask, original):
    umask(0o077)  # a new file would be 0600: the in-place file must not become one
    path = with_metadata(files["target"], tmp_path / "m.gguf", LEAKS)
    path.chmod(original)
    assert run_cli(["sanitize", str(path), "--in-place"]) == 0
    assert oct(mode(path)) == oct(original)
    assert not set(LEAKS) & set(open_gguf(path).fields)


def test_writing_over_an_existing_output_keeps_its_mode(files, tmp_path, umask):
    umask(0o077)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    out.chmod(0o664)
    quantize_gguf(files["target"], out, "Q8_0")
    assert oct(mode(out)) == oct(0o664) and open_gguf(out).arch == "gemma3"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert out.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [out]


# ------------------------------------------------------------------------------------- output folders


@pytest.mark.parametrize("source", ["hf", "drafter"])
def test_convert_refuses_a_missing_output_folder_naming_it(files, tmp_path, capsys, source):
    missing = tmp_path / "not" / "there"
    assert run_cli(["convert", str(files[source]), str(missing / "o.gguf")]) == 1
    err = one_error_line(capsys)
    assert f"the output folder {missing} does not exist" in err and f"mkdir -p {missing}" in err
    assert not (tmp_path / "not").exists()


def test_sanitize_refuses_a_missing_output_folder(files, tmp_path, capsys):
    assert run_cli(["sanitize", str(files["leaky"]), str(tmp_path / "x" / "o.gguf")]) == 1
    assert "does not exist" in one_error_line(capsys) and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------- directories


@pytest.mark.parametrize("command", [["inspect"], ["diff", "{target}"], ["pair", "{target}"]])
def test_a_directory_where_a_gguf_file_belongs_is_named_as_one(files, tmp_path, capsys, command):
    """`inspect DIR` used to say "no such file"."""
    name, *rest = command
    argv = [name, *[arg.format(target=files["target"]) for arg in rest], str(tmp_path)]
    assert run_cli(argv) == 1
    err = one_error_line(capsys)
    assert f"{tmp_path}: is a directory; gemma-mtp {name} takes a GGUF file" in err
    assert "gemma-mtp convert" in err and "no such file" not in err


# ------------------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{src}"],
        ["quantize", "{src}", "{out}", "Q8_0"],
        ["sanitize", "{src}", "{out}"],
        ["convert", "{src}", "{out}", "--layout", "ik"],
        ["pair", "{src}", "{src}"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unreadable_input_is_one_sentence_naming_it(files, tmp_path, capsys, monkeypatch, argv):
    src = tmp_path / "locked.gguf"
    src.write_bytes(files["drafter"].read_bytes())
    deny(monkeypatch, src)
    argv = [a.format(src=src, out=tmp_path / "out.gguf") for a in argv]
    assert run_cli(argv) == 1
    err = one_error_line(capsys)
    assert f"{src}: permission denied: cannot read this file" in err
    assert "Errno" not in err and "PermissionError" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["quantize", "{target}", "{out}", "Q8_0"],
        ["sanitize", "{leaky}", "{out}"],
        ["convert", "{hf}", "{out}"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unwritable_output_folder_is_one_sentence_naming_it(files, tmp_path, capsys, monkeypatch, argv):
    locked = tmp_path / "locked"
    locked.mkdir()
    deny(monkeypatch, locked)
    argv = [a.format(out=locked / "out.gguf", **files) for a in argv]
    assert run_cli(argv) == 1
    err = one_error_line(capsys)
    assert f"{locked}: permission denied: cannot write in this folder" in err
    assert "Errno" not in err and "PermissionError" not in err


def test_permission_errors_are_gemma_mtp_errors(files, tmp_path, monkeypatch):
    deny(monkeypatch, files["target"])
    with pytest.raises(GemmaMTPError, match="permission denied"):
        open_gguf(files["target"])
