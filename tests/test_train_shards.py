"""Self-distillation shards and fine-tuning an existing assistant (`train-drafter --shards / --init`)
on a tiny random Gemma 3 target: shards hold what a teacher-forced pass of the target gives, are
resumable, train a drafter; --init reads every drafter layout and starts from the drafter's own
acceptance without losing it on the drafter's own data."""

from __future__ import annotations

import pytest
import torch

from gemma_mtp.tools.convert import LAYOUTS, convert_drafter_layout
from gemma_mtp.train import TrainOptions, train_drafter
from gemma_mtp.train.data import Features, target_features
from gemma_mtp.train.export import load_assistant
from gemma_mtp.train.loop import load_target
from gemma_mtp.train.objective import acceptance
from gemma_mtp.train.shards import ShardSpec, read_shard, shard_paths, write_shards

OPTIONS = TrainOptions(
    layers=2,
    width=32,
    heads=4,
    centroids=16,
    centroid_top_k=4,
    sequences=48,
    seq_len=24,
    prompt_max=8,
    sample_max=6,
    gen_batch=24,
    heldout_sequences=8,
    steps=120,
    batch_size=8,
    eval_every=40,
    checkpoint_every=40,
)
SPEC = ShardSpec(rows=4, seq_len=24, prompt_min=4, prompt_max=8, top_k=4, sampled_share=0.5, seed=3)
DOCS = [[2, *range(10 + 7 * i, 40 + 7 * i)] for i in range(6)]


@pytest.fixture(scope="module")
def target(reference_models):
    return reference_models.target("gemma3").path


@pytest.fixture(scope="module")
def model(target):
    return load_target(target, "cpu")[0]


@pytest.fixture(scope="module")
def trained(target, tmp_path_factory):
    return train_drafter(
        target, tmp_path_factory.mktemp("drafter") / "d.gguf", options=OPTIONS, progress=False
    )


@pytest.fixture(scope="module")
def shard_dir(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(model, DOCS, root / "train" / "gen", 4, SPEC, progress=False)
    tf = ShardSpec(**{**SPEC.__dict__, "prompt_min": 24, "prompt_max": 24})
    write_shards(model, DOCS, root / "train" / "tf", 2, tf, progress=False)
    held = ShardSpec(**{**SPEC.__dict__, "sampled_share": 0.0, "seed": 9})
    write_shards(model, DOCS, root / "heldout" / "gen", 2, held, progress=False)
    return root


def test_shard_features_are_the_teacher_forced_pass_over_its_tokens(model, shard_dir):
    for path in shard_paths(shard_dir / "train" / "gen") + shard_paths(shard_dir / "train" / "tf"):
        shard, _ = read_shard(path)
        ref = target_features(model, shard.tokens, SPEC.top_k)
        torch.testing.assert_close(shard.hidden, ref.hidden.float(), atol=2e-2, rtol=1e-2)
        for kind in ref.keys:
            torch.testing.assert_close(shard.keys[kind], ref.keys[kind].float(), atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(shard.values[kind], ref.values[kind].float(), atol=2e-2, rtol=1e-2)
        assert (shard.top_ids[..., 0] == ref.top_ids[..., 0]).float().mean() > 0.99


def test_greedy_rows_continue_with_the_targets_argmax_and_sampled_rows_do_not_all(shard_dir):
    differs = 0
    for path in shard_paths(shard_dir / "train" / "gen"):
        s = torch.load(path, weights_only=True)
        start = int(s["start"][0])
        assert start <= SPEC.prompt_max and bool((s["start"] == start).all())
        nxt, argmax = s["tokens"][:, start:].long(), s["top_ids"][:, start - 1 : -1, 0].long()
        assert bool((nxt[~s["sampled"]] == argmax[~s["sampled"]]).all())
        differs += int((nxt[s["sampled"]] != argmax[s["sampled"]]).sum())
    assert differs > 0


def test_write_shards_skips_finished_shards_and_is_deterministic(model, shard_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in shard_paths(shard_dir / "train" / "gen")}
    write_shards(model, DOCS, shard_dir / "train" / "gen", 4, SPEC, progress=False)
    assert {p: p.stat().st_mtime_ns for p in shard_paths(shard_dir / "train" / "gen")} == before
    again = write_shards(model, DOCS, tmp_path, 1, SPEC, progress=False)[0]
    first = torch.load(shard_paths(shard_dir / "train" / "gen")[0], weights_only=True)
    assert torch.equal(torch.load(again, weights_only=True)["tokens"], first["tokens"])


def test_training_from_shards_beats_the_untrained_drafter(target, shard_dir, tmp_path):
    options = TrainOptions(**{**OPTIONS.to_dict(), "steps": 80, "batch_size": 4, "eval_every": 40})
    result = train_drafter(target, tmp_path / "s.gguf", options=options, shards=shard_dir, progress=False)
    assert result.gguf.is_file()
    start, end = result.history[0]["heldout"], result.heldout
    assert end["mean_accepted_length"][-1] > start["mean_accepted_length"][-1] + 0.2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_init_reads_every_drafter_layout_to_the_same_weights(trained, layout, tmp_path):
    reference, _ = load_assistant(trained.gguf)
    path = convert_drafter_layout(trained.gguf, tmp_path / f"{layout}.gguf", layout, keep_centroids=True)
    model, config = load_assistant(path)
    assert config["model_type"] == "gemma4_assistant"
    ours, theirs = reference.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], msg=name)


def _own_data_length(target, hf_dir, features) -> float:
    model, _ = load_assistant(hf_dir)
    result = acceptance(model.eval(), load_target(target, "cpu")[0], features, steps=3, dtype=torch.float32)
    return result["mean_accepted_length"][-1]


def test_fine_tuning_a_trained_drafter_starts_at_its_acceptance_and_keeps_it(target, trained, tmp_path):
    """Step 0 of a fine-tune is the trained drafter's held-out acceptance (its HF export rounds the
    weights to bfloat16: within 0.05), and after fine-tuning on the drafter's own training data its
    acceptance there is no worse (the held-out set of this tiny target is too small to judge by)."""
    options = TrainOptions(**{**OPTIONS.to_dict(), "steps": 40, "lr": 3e-4, "warmup": 10, "eval_every": 20})
    tuned = train_drafter(target, tmp_path / "t.gguf", options=options, init=trained.hf_dir, progress=False)
    fresh = train_drafter(
        target, tmp_path / "f.gguf", options=TrainOptions(**{**OPTIONS.to_dict(), "steps": 1}), progress=False
    )
    first = tuned.history[0]["heldout"]["mean_accepted_length"][-1]
    own = trained.heldout["mean_accepted_length"][-1]
    untrained = fresh.history[0]["heldout"]["mean_accepted_length"][-1]
    assert own > untrained + 0.3  # else the test could not tell a fine-tune from a fresh start
    assert abs(first - own) < 0.05, (first, own)
    saved = torch.load(trained.hf_dir.parent / "features.pt", weights_only=True)
    own_data = Features(**saved["train"])
    before = _own_data_length(target, trained.hf_dir, own_data)
    after = _own_data_length(target, tuned.hf_dir, own_data)
    assert after >= before - 0.1, (before, after)
