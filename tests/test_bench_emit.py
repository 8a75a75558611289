"""`bench --emit llama-server|vllm|sglang`: a profile as other engines' launch flags (their own flag
names), after the pair check. The llama-server form is also launched against the vendored build by
benchmarks/check_emit_llama_server.py (not in CI: CI has no llama.cpp build)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gemma_mtp.bench.emit import launch_flags
from gemma_mtp.cli.main import main
from gemma_mtp.cli.profile import Profile, write_profile
from gemma_mtp.errors import UsageError

MTP = {"target": "t.gguf", "strategy": "mtp", "drafter": "d.gguf", "n_max": 2, "p_min": 0.6}


def test_llama_server_flags_are_llama_cpps_names():
    assert launch_flags("llama-server", **MTP).argv == [
        "llama-server",
        "-m",
        "t.gguf",
        "--spec-type",
        "draft-mtp",
        "-md",
        "d.gguf",
        "--spec-draft-n-max",
        "2",
        "--spec-draft-p-min",
        "0.6",
    ]
    draft = launch_flags("llama-server", **{**MTP, "strategy": "draft", "p_min": 0.0}).argv
    assert draft[3:] == ["--spec-type", "draft-simple", "-md", "d.gguf", "--spec-draft-n-max", "2"]
    ngram = launch_flags("llama-server", **{**MTP, "strategy": "ngram", "drafter": None}).argv
    assert ngram[3:] == ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3"] + [
        "--spec-ngram-simple-size-m",
        "2",
    ]
    plain = launch_flags("llama-server", **{**MTP, "strategy": "none", "drafter": None, "n_max": None})
    assert plain.argv == ["llama-server", "-m", "t.gguf"]


def test_vllm_speculative_config_json():
    launch = launch_flags("vllm", **MTP)
    assert launch.argv[:3] == ["vllm", "serve", "t.gguf"] and launch.argv[3] == "--speculative-config"
    assert json.loads(launch.argv[4]) == {"method": "mtp", "model": "d.gguf", "num_speculative_tokens": 2}
    assert any("p_min 0.6 is not applied" in n for n in launch.notes)
    assert any("Hugging Face checkpoints" in n for n in launch.notes)
    ngram = launch_flags("vllm", **{**MTP, "strategy": "ngram", "drafter": None, "p_min": 0.0})
    assert json.loads(ngram.argv[4]) == {
        "method": "ngram",
        "num_speculative_tokens": 2,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 1,
    }
    assert json.loads(launch_flags("vllm", **{**MTP, "strategy": "draft"}).argv[4])["method"] == "draft_model"


def test_sglang_flags():
    argv = launch_flags("sglang", **MTP).argv
    assert argv[argv.index("--speculative-algorithm") + 1] == "NEXTN"
    assert argv[argv.index("--speculative-draft-model-path") + 1] == "d.gguf"
    assert argv[argv.index("--speculative-num-steps") + 1] == "2"
    assert argv[argv.index("--speculative-eagle-topk") + 1] == "1"
    assert argv[argv.index("--speculative-num-draft-tokens") + 1] == "3"
    draft = launch_flags("sglang", **{**MTP, "strategy": "draft"}).argv
    assert draft[draft.index("--speculative-algorithm") + 1] == "STANDALONE"


def test_a_drafting_profile_without_its_drafter_is_refused():
    with pytest.raises(UsageError, match="names no drafter"):
        launch_flags("llama-server", **{**MTP, "drafter": None})


def _profile(tmp_path, target, drafter, strategy="mtp") -> str:
    profile = Profile(
        target=str(target),
        drafter=str(drafter),
        strategy=strategy,
        n_max=3,
        p_min=0.5,
        tokens_per_s=10.0,
        speedup=1.2,
    )
    return str(write_profile(tmp_path / "p.json", profile))


def test_emit_checks_the_pair_then_prints_the_command(tmp_path, capsys):
    from gemma_mtp.assets import gemma3_270m_gguf
    from gemma_mtp.demo import demo_drafter

    target, drafter = gemma3_270m_gguf(), demo_drafter()
    path = _profile(tmp_path, target, drafter)
    assert main(["bench", "--emit", "llama-server", "--profile", path]) == 0
    out, err = capsys.readouterr()
    assert shlex.split(out) == [
        "llama-server",
        "-m",
        str(target),
        "--spec-type",
        "draft-mtp",
        "-md",
        str(drafter),
        "--spec-draft-n-max",
        "3",
        "--spec-draft-p-min",
        "0.5",
    ]
    assert "pair: compatible" in err


def test_emit_refuses_a_pair_that_does_not_belong_together(tmp_path, capsys):
    from gemma_mtp.assets import gemma3_270m_gguf

    fixtures = Path(__file__).parent / "fixtures" / "llama_cpp"
    path = _profile(tmp_path, gemma3_270m_gguf(), fixtures / "e2b_assistant_dense.f32.gguf")
    assert main(["bench", "--emit", "vllm", "--profile", path]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "not compatible" in err


def test_emit_without_a_profile_says_how_to_make_one(tmp_path, capsys):
    (tmp_path / "t.gguf").write_bytes(b"x")
    assert main(["bench", "--emit", "sglang", "-m", str(tmp_path / "t.gguf")]) == 2
    assert "--emit needs a profile" in capsys.readouterr().err
