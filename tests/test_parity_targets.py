"""Our targets against transformers (fp32, max abs diff <= 1e-4): prefill, cached decode across the
sliding window, verify-sized chunks with rollback, batches, and the checkpoint layouts that occur."""

from __future__ import annotations

import hf_reference as ref
import pytest
import torch

pytest.importorskip("transformers")

TARGETS = list(ref.TARGET_BUILDERS)
PREFILL = 20  # > sliding window (8)
DECODE = 2 * ref.SLIDING_WINDOW
MAX_DRAFT = 4


def positions_for(tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    batch, length = tokens.shape
    return (torch.arange(length) + start).expand(batch, length).clone()


@torch.no_grad()
def run_ours(model, cache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    out = model(tokens, positions, cache)
    return model.logits(out.hidden).float()


@pytest.mark.parametrize("name", TARGETS)
def test_prefill_logits_match_transformers(reference_models, name):
    reference = reference_models.target(name)
    tokens = ref.random_tokens(1, PREFILL, seed=10)
    expected = ref.hf_logits(reference.model, tokens)

    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
    ref.assert_close(run_ours(model, cache, tokens, positions_for(tokens)), expected, f"{name} prefill")


@pytest.mark.parametrize("name", TARGETS)
def test_cached_decode_across_the_window_matches_transformers(reference_models, name):
    reference = reference_models.target(name)
    tokens = ref.random_tokens(1, PREFILL + DECODE, seed=11)
    expected = ref.hf_logits(reference.model, tokens)  # one uncached pass: exact at every position

    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
    prompt = tokens[:, :PREFILL]
    ref.assert_close(
        run_ours(model, cache, prompt, positions_for(prompt)), expected[:, :PREFILL], f"{name} prefill"
    )
    for p in range(PREFILL, PREFILL + DECODE):
        logits = run_ours(model, cache, tokens[:, p : p + 1], torch.tensor([[p]]))
        ref.assert_close(logits, expected[:, p : p + 1], f"{name} decode step at position {p}")


@pytest.mark.parametrize("name", TARGETS)
def test_verify_chunk_then_rollback_matches_transformers(reference_models, name):
    """A verify-sized forward whose last drafts are wrong, a rollback, then decoding on: only the
    accepted tokens may leave a trace (sliding ring included)."""
    reference = reference_models.target(name)
    tokens = ref.random_tokens(1, PREFILL + DECODE, seed=12)
    expected = ref.hf_logits(reference.model, tokens)
    n_good = 2
    chunk = tokens[:, PREFILL : PREFILL + MAX_DRAFT + 1].clone()
    chunk[:, n_good:] = (chunk[:, n_good:] + 1) % ref.VOCAB  # rejected drafts

    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
    run_ours(model, cache, tokens[:, :PREFILL], positions_for(tokens[:, :PREFILL]))
    logits = run_ours(model, cache, chunk, positions_for(chunk, PREFILL))
    ref.assert_close(logits[:, :n_good], expected[:, PREFILL : PREFILL + n_good], f"{name} verify chunk")
    cache.rollback(torch.tensor([PREFILL + n_good]))
    for p in range(PREFILL + n_good, PREFILL + DECODE):
        logits = run_ours(model, cache, tokens[:, p : p + 1], torch.tensor([[p]]))
        ref.assert_close(logits, expected[:, p : p + 1], f"{name} decode after rollback, position {p}")


@pytest.mark.parametrize("name", TARGETS)
def test_batch_of_two_equals_each_alone(reference_models, name):
    reference = reference_models.target(name)
    tokens = ref.random_tokens(2, PREFILL + 4, seed=13)
    expected = torch.cat([ref.hf_logits(reference.model, row[None]) for row in tokens])

    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=2, max_context=64, max_draft=MAX_DRAFT)
    prompt = tokens[:, :PREFILL]
    ref.assert_close(
        run_ours(model, cache, prompt, positions_for(prompt)), expected[:, :PREFILL], f"{name} batch"
    )
    for p in range(PREFILL, PREFILL + 4):
        logits = run_ours(model, cache, tokens[:, p : p + 1], torch.tensor([[p], [p]]))
        ref.assert_close(logits, expected[:, p : p + 1], f"{name} batched decode at position {p}")

    alone, _ = ref.load_ours(reference.path)
    for row in range(2):
        cache = alone.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
        single = run_ours(alone, cache, tokens[row : row + 1], positions_for(tokens[row : row + 1]))
        ref.assert_close(single, expected[row : row + 1], f"{name} row {row} alone")


@pytest.mark.parametrize("name", TARGETS)
def test_left_padded_batch_matches_each_sequence(reference_models, name):
    """Positions < 0 are padding: they are not written and nothing attends to them."""
    reference = reference_models.target(name)
    pad = 3
    tokens = ref.random_tokens(2, PREFILL + 3, seed=14)
    long_row, short_row = tokens[0], tokens[1, pad:]
    expected_long = ref.hf_logits(reference.model, long_row[None])
    expected_short = ref.hf_logits(reference.model, short_row[None])

    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=2, max_context=64, max_draft=MAX_DRAFT)
    prompt = tokens[:, :PREFILL].clone()
    prompt[1, :pad] = 0
    positions = positions_for(prompt)
    positions[1] -= pad  # [-3, -2, -1, 0, 1, ...]
    positions[1, :pad] = -1
    logits = run_ours(model, cache, prompt, positions)
    ref.assert_close(logits[:1], expected_long[:, :PREFILL], f"{name} long row")
    ref.assert_close(logits[1:, pad:], expected_short[:, : PREFILL - pad], f"{name} padded row")
    for step in range(3):
        p_long, p_short = PREFILL + step, PREFILL - pad + step
        step_tokens = torch.stack([long_row[p_long], short_row[p_short]])[:, None]
        logits = run_ours(model, cache, step_tokens, torch.tensor([[p_long], [p_short]]))
        ref.assert_close(logits[:1], expected_long[:, p_long : p_long + 1], f"{name} long row step {step}")
        ref.assert_close(
            logits[1:], expected_short[:, p_short : p_short + 1], f"{name} padded row step {step}"
        )


@pytest.mark.parametrize("name", ["e2b_conditional", "dense31b", "unified"])
def test_released_config_spelling_loads_the_same_model(reference_models, tmp_path, name):
    """Released config.json files say ``global_head_dim``/``num_global_key_value_heads``, not
    transformers 5.23's ``per_layer_config``."""
    reference = reference_models.target(name)
    hub = ref.copy_checkpoint(reference.path, tmp_path / name)
    ref.hubify_config(hub)
    tokens = ref.random_tokens(1, PREFILL, seed=15)

    model, _ = ref.load_ours(hub)
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
    logits = run_ours(model, cache, tokens, positions_for(tokens))
    ref.assert_close(logits, ref.hf_logits(reference.model, tokens), f"{name} with released config spelling")


@pytest.mark.parametrize("name", ["e2b_conditional", "dense31b", "unified"])
def test_hf_reads_released_config_spelling_identically(reference_models, tmp_path, name):
    """Reference-side check: transformers builds the same model from either spelling."""
    reference = reference_models.target(name)
    hub = ref.copy_checkpoint(reference.path, tmp_path / name)
    ref.hubify_config(hub)
    with ref.reference_patches():
        reloaded = type(reference.model).from_pretrained(
            hub, dtype=torch.float32, attn_implementation="eager"
        )
    tokens = ref.random_tokens(1, PREFILL, seed=15)
    ref.assert_close(
        ref.hf_logits(reloaded.eval(), tokens), ref.hf_logits(reference.model, tokens), name, atol=0
    )


@pytest.mark.parametrize("name", ["e2b_multimodal", "gemma3_multimodal"])
def test_multimodal_checkpoint_loads_its_text_model(reference_models, name):
    """Released Gemma 4 (and Gemma 3 >= 4B) checkpoints carry vision/audio towers; text-only
    generation loads the language model and leaves the towers alone."""
    reference = reference_models.target(name)
    tokens = ref.random_tokens(1, PREFILL, seed=16)
    model, _ = ref.load_ours(reference.path)
    cache = model.make_cache(batch_size=1, max_context=64, max_draft=MAX_DRAFT)
    logits = run_ours(model, cache, tokens, positions_for(tokens))
    ref.assert_close(logits, ref.hf_logits(reference.model, tokens), f"{name} text logits")


def test_hf_reference_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    first = load_file(ref.build_e2b_like(tmp_path / "a").path / "model.safetensors")
    second = load_file(ref.build_e2b_like(tmp_path / "b").path / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
