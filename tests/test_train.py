"""train-drafter on a tiny random Gemma 3 target: a loadable drafter (HF and GGUF) that drafts
better than an untrained one, deterministic in its seed, resumable, and trained on what the
runtime actually computes."""

from __future__ import annotations

import json

import hf_reference as ref
import pytest
import torch

import gemma_mtp
from gemma_mtp.config import FULL, SLIDING
from gemma_mtp.models.assistant import AssistantModel
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.train import TrainOptions, train_drafter
from gemma_mtp.train.clusters import balanced_clusters, cluster_of
from gemma_mtp.train.data import read_corpus
from gemma_mtp.train.export import init_assistant
from gemma_mtp.train.objective import _body, _sequence_kv, unroll
from gemma_mtp.train.options import make_assistant_config

GREEDY = SamplingParams(temperature=0)
# small enough for a few seconds on one thread; 16 clusters of 16 tokens exercise the centroid head
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
PROMPTS = [[2, 17, 33, 100], [2, 5, 6, 7, 8, 9], [2, 200, 3, 41]]


@pytest.fixture(scope="module")
def target(reference_models):
    return reference_models.target("gemma3").path


@pytest.fixture(scope="module")
def trained(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("drafter") / "d.gguf"
    result = train_drafter(target, out, options=OPTIONS, progress=False)
    return result


def spec_acceptance(target, drafter) -> tuple[float, bool]:
    """Mean accepted length of greedy MTP over PROMPTS, and whether every output equals plain greedy."""
    engine = gemma_mtp.load(target, drafter, dtype="float32", device="cpu", ctx_size=64)
    accepted = rounds = 0
    lossless = True
    for prompt in PROMPTS:
        plain = engine.generate(prompt, n_predict=24, sampling=GREEDY, spec=SpecOptions())
        spec = engine.generate(prompt, n_predict=24, sampling=GREEDY, spec=SpecOptions(type="mtp", n_max=3))
        accepted += spec.speculative["accepted"]
        rounds += spec.speculative["rounds"]
        lossless &= spec.token_ids == plain.token_ids
    return 1 + accepted / rounds, lossless


def test_trained_drafter_loads_as_gguf_and_hf_and_beats_an_untrained_one(target, trained, tmp_path):
    assert trained.gguf.is_file() and (trained.hf_dir / "model.safetensors").is_file()
    untrained = train_drafter(
        target, tmp_path / "u.gguf", options=TrainOptions(**{**OPTIONS.to_dict(), "steps": 1}), progress=False
    )
    base, base_lossless = spec_acceptance(target, untrained.gguf)
    for drafter in (trained.gguf, trained.hf_dir):
        mean_len, lossless = spec_acceptance(target, drafter)
        assert lossless and base_lossless
        assert mean_len > base + 0.3, (
            f"{drafter}: mean accepted length {mean_len:.2f} vs untrained {base:.2f}"
        )
    assert trained.heldout["mean_accepted_length"][-1] > untrained.heldout["mean_accepted_length"][-1]


def test_training_is_deterministic_in_the_seed(target, trained, tmp_path):
    again = train_drafter(target, tmp_path / "d.gguf", options=OPTIONS, progress=False)
    assert again.gguf.read_bytes() == trained.gguf.read_bytes()
    assert again.history[-1]["loss"] == trained.history[-1]["loss"]


def test_resume_continues_to_the_same_weights(target, trained, tmp_path):
    out = tmp_path / "d.gguf"
    train_drafter(target, out, options=OPTIONS, progress=False, stop_after=40)
    resumed = train_drafter(target, out, options=OPTIONS, resume=True, progress=False)
    assert resumed.steps == OPTIONS.steps
    assert resumed.gguf.read_bytes() == trained.gguf.read_bytes()


def test_hf_config_declares_a_gemma4_assistant_paired_to_the_target(trained):
    config = json.loads((trained.hf_dir / "config.json").read_text())
    assert config["model_type"] == "gemma4_assistant"
    assert config["backbone_hidden_size"] == ref.HIDDEN
    assert config["use_ordered_embeddings"] and config["num_centroids"] == 16
    assert config["text_config"]["layer_types"] == [SLIDING, FULL]


def test_training_forward_is_the_runtime_forward(target):
    """The loss's batched unroll, at one query position, equals AssistantModel.forward over the
    runtime's own KV cache view (the drafter's mask convention included)."""
    model, config = ref.load_ours(target)
    options = TrainOptions(**{**OPTIONS.to_dict(), "layers": 3})
    assistant = init_assistant(model, make_assistant_config(config, options), seed=0).eval()
    torch.manual_seed(0)
    for p in assistant.parameters():
        p.data.normal_(0, 0.3)
    tokens = ref.random_tokens(1, 20, seed=3)
    from gemma_mtp.train.data import target_features

    feats = target_features(model, tokens, top_k=4)
    with torch.no_grad():
        states = unroll(assistant, model, feats, steps=2, dtype=torch.float32)
    for p in (1, 9, 15):  # sliding window 8: query 15 sees positions 6..14 only
        cache = model.make_cache(batch_size=1, max_context=32, max_draft=4)
        with torch.no_grad():
            out = model(tokens[:, :p], torch.arange(p)[None], cache)
            shared = {kind: cache.shared_kv(kind) for kind in config.layer_kinds}
            x = torch.cat([model.embed(tokens[:, p : p + 1]), out.hidden[:, -1:]], dim=-1)
            step1 = assistant(x, torch.tensor([[p]]), shared)
            x = torch.cat([model.embed(tokens[:, p + 1 : p + 2]), step1.hidden], dim=-1)
            step2 = assistant(x, torch.tensor([[p]]), shared)
        table = assistant.model.embed_tokens.weight
        for s, ref_out in enumerate((step1, step2)):
            ours = assistant.head(states[s][:, p - 1 : p])
            torch.testing.assert_close(ours, ref_out.logits, atol=1e-4, rtol=1e-4)
        assert table.shape[0] == config.vocab_size


def test_sequence_kv_masks_future_and_out_of_window_positions(target):
    model, config = ref.load_ours(target)
    assistant = AssistantModel(make_assistant_config(config, OPTIONS))
    feats_kv = {SLIDING: torch.zeros(1, 1, 20, 16), FULL: torch.zeros(1, 1, 20, 16)}

    class Batch:
        keys = values = feats_kv
        tokens = torch.zeros(1, 20, dtype=torch.long)
        hidden = torch.zeros(1, 20, 4)

    shared = _sequence_kv(Batch, assistant, 17, torch.float32)
    full, sliding = shared[FULL][2][0, 0], shared[SLIDING][2][0, 0]
    q = 15  # row q - 1 is the query at position q
    assert full[q - 1].nonzero().squeeze(1).tolist() == list(range(15))
    window = config.sliding_window
    assert sliding[q - 1].nonzero().squeeze(1).tolist() == list(range(q - window - 1, q))
    assert _body is not None


def test_balanced_clusters_are_equal_sized_and_group_similar_rows():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=gen) * 4
    rows = centres.repeat_interleave(32, dim=0) + 0.1 * torch.randn(256, 16, generator=gen)
    ordering = balanced_clusters(rows, 8)
    assert sorted(ordering.tolist()) == list(range(256))
    clusters = cluster_of(ordering, 8)
    true = torch.arange(256) // 32
    for c in range(8):
        members = true[clusters == c]
        assert members.numel() == 32 and (members == members[0]).all()


def test_corpus_reads_text_and_token_id_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('[2, 5, 6]\n{"ids": [2, 7]}\n\n')
    assert read_corpus([path]) == [[2, 5, 6], [2, 7]]
    with pytest.raises(gemma_mtp.errors.UsageError, match="tokenizer"):
        read_corpus([tmp_path / "c.jsonl", _text(tmp_path)])


def _text(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("hello")
    return path


def test_cli_flags_default_to_the_options_dataclass():
    import argparse

    from gemma_mtp.train.cli import add_train_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-drafter", "--target", "t.gguf", "--out", "d.gguf"])
    assert options_from_args(args) == TrainOptions()
    args = parser.parse_args(
        [
            "train-drafter",
            "--target",
            "t",
            "--out",
            "d",
            "--width",
            "64",
            "--no-cache-features",
            "--device",
            "cuda",
        ]
    )
    assert options_from_args(args) == TrainOptions(width=64, cache_features=False, device="cuda")
