"""Bad checkpoints through the CLI: exit code 1 and exactly one stderr line naming the problem.
Sharded checkpoints load like single-file ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hf_reference as ref
import pytest
import torch
from deny_access import deny

pytest.importorskip("transformers")


def run_cli(model_dir: Path) -> tuple[int, list[str]]:
    argv = [sys.executable, "-m", "gemma_mtp.cli.main", "run", "-m", str(model_dir)]
    argv += ["--prompt-ids", "2", "-n", "1", "--device", "cpu"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ref.subprocess_env())
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line_error(model_dir: Path, *needles: str) -> str:
    code, lines = run_cli(model_dir)
    assert code == 1, f"exit code {code}, stderr: {lines}"
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"
    return lines[0]


@pytest.fixture
def e2b_copy(reference_models, tmp_path) -> Path:
    return ref.copy_checkpoint(reference_models.target("e2b").path, tmp_path / "e2b")


def rewrite_tensors(model_dir: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_config_json_names_the_path(e2b_copy):
    (e2b_copy / "config.json").unlink()
    assert_one_line_error(e2b_copy, str(e2b_copy), "config.json")


def test_unknown_model_type_is_named(e2b_copy):
    config = json.loads((e2b_copy / "config.json").read_text())
    config["model_type"] = "mamba_unheard_of"
    (e2b_copy / "config.json").write_text(json.dumps(config))
    assert_one_line_error(e2b_copy, "mamba_unheard_of")


def test_missing_tensor_is_named(e2b_copy):
    name = "model.layers.1.self_attn.q_proj.weight"
    rewrite_tensors(e2b_copy, lambda tensors: tensors.pop(name))
    assert_one_line_error(e2b_copy, name)


def test_unexpected_tensor_is_named(e2b_copy):
    name = "model.layers.0.self_attn.bogus_proj.weight"
    rewrite_tensors(e2b_copy, lambda tensors: tensors.update({name: torch.zeros(4, 4)}))
    assert_one_line_error(e2b_copy, name)


def test_misshapen_tensor_is_named(e2b_copy):
    name = "model.layers.0.mlp.up_proj.weight"
    rewrite_tensors(e2b_copy, lambda tensors: tensors.update({name: tensors[name][:-1].clone()}))
    assert_one_line_error(e2b_copy, name)


def test_assistant_given_as_model_says_to_use_md(reference_models):
    line = assert_one_line_error(reference_models.assistant("e2b", ordered=True).path, "-md")
    assert "assistant" in line.lower() or "drafter" in line.lower(), line


def test_missing_shard_is_named(reference_models, tmp_path):
    sharded = ref.copy_checkpoint(reference_models.target("e2b_sharded").path, tmp_path / "sharded")
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    assert_one_line_error(sharded, shard.name)


def test_sharded_checkpoint_loads_like_the_single_file(reference_models):
    sharded = reference_models.target("e2b_sharded")
    single = reference_models.target("e2b")
    assert (sharded.path / "model.safetensors.index.json").is_file()
    assert len(list(sharded.path.glob("model-*.safetensors"))) > 1
    tokens = ref.random_tokens(1, 12, seed=40)
    expected = ref.hf_logits(single.model, tokens)
    ref.assert_close(ref.hf_logits(sharded.model, tokens), expected, "transformers sharded vs single", atol=0)

    for path in (sharded.path, single.path):
        model, _ = ref.load_ours(path)
        cache = model.make_cache(batch_size=1, max_context=64, max_draft=4)
        with torch.no_grad():
            logits = model.logits(model(tokens, torch.arange(12)[None], cache).hidden)
        ref.assert_close(logits, expected, f"ours from {path.name}")


# ------------------------------------------------------------------------------------- in-process


def main_error(capsys, argv: list[str]) -> str:
    """`gemma-mtp ARGV` in this process (so `deny` applies): exit 1 and one stderr line."""
    from gemma_mtp.cli.main import main

    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_drafter_gguf_given_as_model_with_a_text_prompt_says_to_use_md(capsys):
    """The tokenizer is read before the weights; it used to say "tokenizer.ggml.model is None"."""
    from gemma_mtp import demo

    drafter = demo.demo_drafter()
    line = main_error(capsys, ["run", "-m", str(drafter), "-p", "hi", "--device", "cpu"])
    assert str(drafter) in line and "assistant (drafter" in line
    assert "-md/--model-draft" in line and "-m/--model" in line
    assert "tokenizer.ggml.model is None" not in line


@pytest.fixture
def tiny_gguf(reference_models, tmp_path) -> Path:
    from gemma_mtp.tools.convert import convert_hf_to_gguf

    return convert_hf_to_gguf(reference_models.target("gemma3").path, tmp_path / "tiny.gguf")


def test_gguf_without_a_tokenizer_says_so_plainly(tiny_gguf, capsys):
    line = main_error(capsys, ["run", "-m", str(tiny_gguf), "-p", "hi", "--device", "cpu"])
    assert "carries no tokenizer" in line and "--prompt-ids" in line and "is None" not in line


def assert_permission_sentence(line: str, path: Path, what: str = "file") -> None:
    assert f"{path}: permission denied: cannot read this {what}" in line, line
    assert "Errno" not in line and "PermissionError" not in line, line


def test_unreadable_gguf_model_is_one_sentence(tiny_gguf, capsys, monkeypatch):
    deny(monkeypatch, tiny_gguf)
    line = main_error(
        capsys, ["run", "-m", str(tiny_gguf), "--prompt-ids", "2", "-n", "1", "--device", "cpu"]
    )
    assert_permission_sentence(line, tiny_gguf)


@pytest.mark.parametrize("locked", ["config.json", "model.safetensors"])
def test_unreadable_hf_checkpoint_file_is_one_sentence(e2b_copy, capsys, monkeypatch, locked):
    deny(monkeypatch, e2b_copy / locked)
    line = main_error(capsys, ["run", "-m", str(e2b_copy), "--prompt-ids", "2", "-n", "1", "--device", "cpu"])
    assert_permission_sentence(line, e2b_copy / locked)


def test_unreadable_tokenizers_are_one_sentence(tiny_gguf, reference_models, tmp_path, monkeypatch):
    from gemma_mtp.errors import GemmaMTPError
    from gemma_mtp.tokenizer import load_tokenizer

    hf = tmp_path / "tok"
    hf.mkdir()
    (hf / "tokenizer.json").write_text("{}")
    deny(monkeypatch, tiny_gguf, hf / "tokenizer.json")
    for path, locked in ((tiny_gguf, tiny_gguf), (hf, hf / "tokenizer.json")):
        with pytest.raises(GemmaMTPError) as info:
            load_tokenizer(path)
        assert_permission_sentence(str(info.value), locked)


def test_model_format_is_read_from_the_content(tiny_gguf, tmp_path):
    """A GGUF named otherwise still loads as a GGUF in the loaders that decide by content."""
    from gemma_mtp.errors import ModelFormatError
    from gemma_mtp.tokenizer import load_tokenizer
    from gemma_mtp.weights.gguf_loader import load_gguf_model
    from gemma_mtp.weights.hf import load_hf_model

    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(tiny_gguf.read_bytes())
    _, config, _ = load_gguf_model(renamed, dtype="float32")
    assert config.family == "gemma3"
    with pytest.raises(ModelFormatError, match="is a GGUF file, not a Hugging Face model directory"):
        load_hf_model(renamed)
    with pytest.raises(ModelFormatError, match="is a directory, not a GGUF file"):
        load_gguf_model(tmp_path)
    with pytest.raises(ModelFormatError, match="carries no tokenizer"):
        load_tokenizer(renamed)
