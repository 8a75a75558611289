"""The candidate-restricted token loss (`train-drafter --token-loss clusters`) on a tiny random Gemma 3
target: with every cluster a candidate it is the dense loss, gradients included; with few clusters
the target's top-k tokens are always candidates, the loss is a softmax over the candidates only (so
never above the dense one) and training lowers it; the runtime-rule prediction does not change."""

from __future__ import annotations

import hf_reference as ref
import pytest
import torch
import torch.nn.functional as F

from gemma_mtp.errors import UsageError
from gemma_mtp.train import TrainOptions, train_drafter
from gemma_mtp.train.candidates import ClusterTable, candidate_clusters, cluster_token_loss
from gemma_mtp.train.clusters import cluster_of
from gemma_mtp.train.data import target_features
from gemma_mtp.train.export import init_assistant
from gemma_mtp.train.loop import _resolve_token_loss
from gemma_mtp.train.objective import draft_loss, predict, unroll
from gemma_mtp.train.options import make_assistant_config

STEPS = 3
TOP_K = 4  # target probabilities per position; 16 clusters of 16 tokens
OPTIONS = TrainOptions(layers=2, width=32, heads=4, centroids=16, centroid_top_k=2)


@pytest.fixture(scope="module")
def target(reference_models):
    return reference_models.target("gemma3").path


@pytest.fixture(scope="module")
def model_and_config(target):
    return ref.load_ours(target)


@pytest.fixture(scope="module")
def features(model_and_config):
    model, _ = model_and_config
    # 4 x (24 - 3) positions x 3 steps: several tiles per cluster
    feats = target_features(model, ref.random_tokens(4, 24, seed=5), top_k=TOP_K)
    return feats.to("cpu")  # copies made outside inference mode, as training batches are


def make_assistant(model_and_config, centroid_top_k: int, seed: int = 0):
    model, config = model_and_config
    options = TrainOptions(**{**OPTIONS.to_dict(), "centroid_top_k": centroid_top_k})
    assistant = init_assistant(model, make_assistant_config(config, options), seed=seed)
    torch.manual_seed(seed)
    for p in assistant.parameters():  # scores far from uniform, so a wrong candidate would show
        p.data.normal_(0, 0.3)
    return assistant


def losses(assistant, model, features, token_loss: str):
    head = assistant.masked_embedding
    return draft_loss(
        assistant,
        model,
        features,
        steps=STEPS,
        step_decay=0.8,
        cluster_weight=1.0,
        cluster=cluster_of(head.token_ordering, head.num_centroids),
        dtype=torch.float32,
        token_loss=token_loss,
    )


def gradients(assistant, parts) -> dict[str, torch.Tensor]:
    assistant.zero_grad(set_to_none=True)
    parts.total.backward()
    return {name: p.grad.clone() for name, p in assistant.named_parameters() if p.grad is not None}


def test_candidates_of_every_cluster_give_the_dense_loss_and_its_gradients(model_and_config, features):
    model, _ = model_and_config
    assistant = make_assistant(model_and_config, centroid_top_k=12)  # 4 + 12 = all 16 clusters
    full = losses(assistant, model, features, "full")
    full_grads = gradients(assistant, full)
    ours = losses(assistant, model, features, "clusters")
    our_grads = gradients(assistant, ours)
    torch.testing.assert_close(ours.total, full.total, atol=1e-5, rtol=1e-5)
    for mine, dense in zip(ours.token, full.token, strict=True):
        torch.testing.assert_close(mine, dense, atol=1e-5, rtol=1e-5)
    assert our_grads.keys() == full_grads.keys()
    assert "model.embed_tokens.weight" in our_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def _rows(assistant, model, features):
    """One step's states, target ids/probs and centroid logits, flattened to rows."""
    with torch.no_grad():
        x = unroll(assistant, model, features, STEPS, torch.float32)[0]
    x = x.reshape(-1, x.shape[-1])
    n = features.tokens.shape[1] - STEPS
    ids = features.top_ids[:, 1 : 1 + n].reshape(x.shape[0], -1)
    probs = features.top_probs[:, 1 : 1 + n].reshape(x.shape[0], -1)
    return x, ids, probs / probs.sum(dim=-1, keepdim=True), assistant.masked_embedding.centroids(x)


def test_few_clusters_hold_the_targets_top_k_and_the_drafters_own_best(model_and_config, features):
    model, _ = model_and_config
    assistant = make_assistant(model_and_config, centroid_top_k=2)
    head = assistant.masked_embedding
    x, ids, _, centroid_logits = _rows(assistant, model, features)
    grouped = ClusterTable(head, assistant.model.embed_tokens.weight)
    chosen = candidate_clusters(centroid_logits, grouped.cluster[ids], TOP_K + 2)
    runtime_top = torch.topk(centroid_logits, k=head.top_k, dim=-1).indices
    for row in range(chosen.shape[0]):
        mine = set(chosen[row].tolist())
        assert len(mine) == TOP_K + 2
        assert set(grouped.cluster[ids[row]].tolist()) <= mine
        assert set(runtime_top[row].tolist()) <= mine
        # the candidates are the tokens of the chosen clusters
        candidates = head.token_ordering.view(16, 16)[chosen[row]].flatten()
        assert set(ids[row].tolist()) <= set(candidates.tolist())


def test_few_clusters_give_the_softmax_over_the_candidates_only(model_and_config, features):
    model, _ = model_and_config
    assistant = make_assistant(model_and_config, centroid_top_k=2)
    head = assistant.masked_embedding
    table = assistant.model.embed_tokens.weight
    x, ids, probs, centroid_logits = _rows(assistant, model, features)
    with torch.no_grad():
        grouped = ClusterTable(head, table)
        ours = cluster_token_loss(x, grouped, centroid_logits, ids, probs, TOP_K + 2)
        chosen = candidate_clusters(centroid_logits, grouped.cluster[ids], TOP_K + 2)
        logits = x @ table.T
        candidate = torch.zeros_like(logits, dtype=torch.bool)
        candidate.scatter_(1, head.token_ordering.view(16, 16)[chosen].flatten(1), True)
        restricted = F.log_softmax(logits.masked_fill(~candidate, -torch.inf), dim=-1)
        expected = -(probs * restricted.gather(1, ids)).sum(dim=-1)
        dense = -(probs * F.log_softmax(logits, dim=-1).gather(1, ids)).sum(dim=-1)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert (ours <= dense + 1e-5).all() and (ours < dense - 1e-3).any()


def test_a_few_optimizer_steps_lower_the_candidate_loss(model_and_config, features):
    model, _ = model_and_config
    assistant = make_assistant(model_and_config, centroid_top_k=2)
    opt = torch.optim.AdamW(assistant.parameters(), lr=1e-2)
    seen = []
    for _ in range(8):
        parts = losses(assistant, model, features, "clusters")
        seen.append(float(sum(parts.token)))
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
    assert all(torch.isfinite(torch.tensor(seen)))
    assert seen[-1] < 0.9 * seen[0], seen


def test_prediction_is_the_runtime_heads_argmax(model_and_config, features):
    model, _ = model_and_config
    assistant = make_assistant(model_and_config, centroid_top_k=2).eval()
    x = _rows(assistant, model, features)[0]
    with torch.no_grad():
        assert torch.equal(predict(assistant, x, rows=7), assistant.head(x).argmax(dim=-1))


def test_token_loss_option_resolves_by_the_drafters_head(model_and_config):
    head = make_assistant(model_and_config, centroid_top_k=2).masked_embedding
    assert _resolve_token_loss("auto", head) == "clusters"
    assert _resolve_token_loss("full", head) == "full"
    assert _resolve_token_loss("auto", None) == "full"
    with pytest.raises(UsageError, match="--token-loss clusters"):
        _resolve_token_loss("clusters", None)
    head.token_ordering[1] = head.token_ordering[0]  # a token in two clusters, another in none
    assert _resolve_token_loss("auto", head) == "full"
    with pytest.raises(UsageError, match="--token-loss"):
        TrainOptions(token_loss="dense")


def test_train_drafter_refuses_the_candidate_loss_for_a_dense_head(target, tmp_path):
    options = TrainOptions(**{**OPTIONS.to_dict(), "centroids": 0, "token_loss": "clusters", "steps": 1})
    with pytest.raises(UsageError, match="dense head"):
        train_drafter(target, tmp_path / "d.gguf", options=options, progress=False)
