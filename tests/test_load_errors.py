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
