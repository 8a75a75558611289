"""Our plain greedy generation (Python API and CLI) against transformers' ``generate(do_sample=False)``."""

from __future__ import annotations

import json
import subprocess
import sys

import hf_reference as ref
import pytest

pytest.importorskip("transformers")

N_PREDICT = 20
GENERATE_TARGETS = ["e2b", "e2b_conditional", "gemma3"]


def stop_ids(model) -> set[int]:
    """eos ids of the reference model's config and generation config."""
    ids = set()
    for eos in (ref.text_config_of(model).eos_token_id, model.generation_config.eos_token_id):
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids


def hf_continuation(model, prompt: list[int], n_new: int) -> list[int]:
    expected = ref.hf_greedy(model, prompt, n_new)
    # a stop id inside would make the two runs stop at different places by contract, not by a bug
    assert not stop_ids(model) & set(expected), (
        f"pick another prompt: reference emits a stop id in {expected}"
    )
    return expected


@pytest.mark.parametrize("name", GENERATE_TARGETS)
def test_plain_greedy_matches_transformers(reference_models, name):
    import gemma_mtp
    from gemma_mtp.sampling import SamplingParams

    reference = reference_models.target(name)
    prompt = ref.random_tokens(1, 10, seed=30)[0].tolist()  # prompt + output cross the window twice
    expected = hf_continuation(reference.model, prompt, N_PREDICT)

    engine = gemma_mtp.load(reference.path, dtype="float32", device="cpu")
    result = engine.generate(prompt, n_predict=N_PREDICT, sampling=SamplingParams(temperature=0))
    assert list(result.token_ids) == expected


@pytest.mark.parametrize("name", ["e2b", "gemma3"])
def test_cli_run_json_matches_transformers(reference_models, name):
    reference = reference_models.target(name)
    expected = hf_continuation(reference.model, [2, 5, 7], 8)
    argv = ["run", "-m", str(reference.path), "--prompt-ids", "2,5,7", "-n", "8", "--temp", "0", "--json"]
    argv += ["--dtype", "float32", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_mtp.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=ref.subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["token_ids"] == expected
    assert report["n_prompt"] == 3
    assert report["n_generated"] == 8
    assert report["speculative"] is None
