"""The centroid head's `token_ordering`: the vocabulary cut into equal clusters of similar tokens.

The target's tied head scores a token by hidden . embedding, so tokens whose embedding rows point the
same way tend to be likely together; grouping them lets a few clusters cover the target's next
token. Balanced recursive bisection: split each group at the median of its projection on its
principal direction (power iteration), halving the number of clusters it must still become. Every
cluster gets exactly vocab / n_clusters tokens, as `CentroidHead` requires.
"""

from __future__ import annotations

import torch

__all__ = ["balanced_clusters", "cluster_of"]


def _principal_direction(x: torch.Tensor, generator: torch.Generator, iters: int = 8) -> torch.Tensor:
    """Top principal direction of the rows of x [N, D] (centred), by power iteration."""
    centred = x - x.mean(dim=0, keepdim=True)
    v = torch.randn(x.shape[1], generator=generator, dtype=x.dtype).to(x.device)
    for _ in range(iters):
        v = centred.T @ (centred @ v)
        v = v / v.norm().clamp(min=1e-12)
    return centred @ v  # [N] projections


def balanced_clusters(rows: torch.Tensor, n_clusters: int, *, seed: int = 0) -> torch.Tensor:
    """rows: [V, D] token embeddings -> token_ordering [V] (long): cluster c is the slice
    token_ordering[c * V // n_clusters : (c + 1) * V // n_clusters]."""
    vocab = rows.shape[0]
    if n_clusters < 1 or vocab % n_clusters:
        raise ValueError(f"{n_clusters} clusters do not divide a vocabulary of {vocab} tokens")
    per = vocab // n_clusters
    x = rows.detach().float()
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    generator = torch.Generator().manual_seed(seed)
    done: list[torch.Tensor] = []
    stack = [(torch.arange(vocab, device=x.device), n_clusters)]
    while stack:
        ids, k = stack.pop()
        if k == 1:
            done.append(ids)
            continue
        k_left = k // 2
        order = torch.argsort(_principal_direction(x[ids], generator), stable=True)
        left, right = ids[order[: k_left * per]], ids[order[k_left * per :]]
        stack.append((right, k - k_left))
        stack.append((left, k_left))
    return torch.cat(done).cpu()


def cluster_of(token_ordering: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """The inverse map: [V] cluster index of every token."""
    vocab = token_ordering.numel()
    out = torch.empty(vocab, dtype=torch.long, device=token_ordering.device)
    out[token_ordering] = torch.arange(vocab, device=token_ordering.device) // (vocab // n_clusters)
    return out
