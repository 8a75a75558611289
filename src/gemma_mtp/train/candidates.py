"""The candidate-restricted token loss: a softmax over the tokens of a few clusters per position.

A centroid head's drafter only ever scores the tokens of its top clusters, so its token loss need
not pay the 262,144-row head either. Per position the candidates are the tokens of a fixed number of
clusters: every cluster holding one of the target's top-k tokens, then the drafter's own best
clusters by centroid logits (detached: the runtime's choice, not something to train through) until
the count is reached. The static count keeps shapes fixed; with every cluster a candidate the loss
is the dense one.

Cost: the logits of (position, cluster) pairs are a batched matrix product over tiles of `TILE_ROWS`
positions that chose the same cluster, so each cluster's [per_cluster, width] block of the head
table is read once per tile rather than once per position, and the whole table never is (its
gradient is a scatter of the blocks actually used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.assistant import CentroidHead

__all__ = ["candidate_clusters", "ClusterTable", "cluster_token_loss"]

TILE_ROWS = (
    32  # (position, cluster) pairs per tile of one cluster: one [TILE_ROWS, width] x [width, per] product
)
CHUNK_ROWS = 4096  # positions per pass (bounds the tiles' memory)


def candidate_clusters(
    centroid_logits: torch.Tensor, target_clusters: torch.Tensor, count: int
) -> torch.Tensor:
    """[N, count] distinct clusters per row: all of `target_clusters` [N, K] (count >= K), then the
    best of `centroid_logits` [N, C] (detached) among the rest."""
    score = torch.nan_to_num(centroid_logits.detach().float(), nan=-torch.inf)
    score = score.scatter(1, target_clusters, torch.inf)
    return torch.topk(score, k=count, dim=-1).indices


class ClusterTable:
    """A centroid head's token table grouped by cluster, made once per loss (gradients reach `table`)."""

    def __init__(self, head: CentroidHead, table: torch.Tensor) -> None:
        order = head.token_ordering
        self.per = head.per_centroid
        self.n_clusters = head.num_centroids
        # [C, per * width]: row c is cluster c's tokens' rows in token_ordering's order
        self.blocks = F.embedding(order.to(table.device), table).view(self.n_clusters, -1)
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=order.device)
        self.cluster = (position // self.per).to(table.device)  # [V] cluster of each token
        self.rank = (position % self.per).to(table.device)  # [V] its index inside the cluster


def _tile_plan(chosen: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiles for the pairs (row, chosen[row, m]), grouped by cluster: (slot of every pair [N*M], row
    of every tile slot [tiles * TILE_ROWS] (padding slots read row 0; nothing reads their logits),
    cluster of every tile [tiles])."""
    flat = chosen.reshape(-1)
    n_pairs, dev = flat.numel(), flat.device
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_clusters)
    tiles = (counts + TILE_ROWS - 1) // TILE_ROWS
    first_pair = torch.cumsum(counts, 0) - counts
    first_tile = torch.cumsum(tiles, 0) - tiles
    by_cluster = flat[order]
    slot = torch.empty_like(order)
    slot[order] = (
        first_tile[by_cluster] * TILE_ROWS + torch.arange(n_pairs, device=dev) - first_pair[by_cluster]
    )
    n_tiles = int(tiles.sum())
    slot_row = torch.zeros(n_tiles * TILE_ROWS, dtype=torch.long, device=dev)
    slot_row[slot] = torch.arange(n_pairs, device=dev) // chosen.shape[1]
    tile_cluster = torch.repeat_interleave(torch.arange(n_clusters, device=dev), tiles)
    return slot, slot_row, tile_cluster


def _candidate_logits(x: torch.Tensor, grouped: ClusterTable, chosen: torch.Tensor) -> torch.Tensor:
    """[N, M * per] float32: x [N, width] . the rows of the tokens of clusters chosen [N, M], cluster by
    cluster in `chosen`'s order, each in token_ordering's order."""
    slot, slot_row, tile_cluster = _tile_plan(chosen, grouped.n_clusters)
    width, per = x.shape[-1], grouped.per
    rows = F.embedding(slot_row, x).view(-1, TILE_ROWS, width)  # [tiles, TILE_ROWS, width]
    blocks = F.embedding(tile_cluster, grouped.blocks).view(-1, per, width)  # [tiles, per, width]
    logits = torch.bmm(rows, blocks.to(rows.dtype).transpose(1, 2)).view(-1, per)
    return F.embedding(slot, logits).float().view(x.shape[0], -1)


def cluster_token_loss(
    x: torch.Tensor,
    grouped: ClusterTable,
    centroid_logits: torch.Tensor,
    ids: torch.Tensor,
    probs: torch.Tensor,
    count: int,
) -> torch.Tensor:
    """Per-row cross-entropy [N] of the softmax over `count` clusters' tokens against `probs` [N, K]
    on the target's top-k `ids` [N, K] (always candidates); x [N, width], centroid_logits [N, C]."""
    out = []
    for start in range(0, x.shape[0], CHUNK_ROWS):
        part = slice(start, start + CHUNK_ROWS)
        target_clusters = grouped.cluster[ids[part]]
        chosen = candidate_clusters(centroid_logits[part], target_clusters, count)  # [n, M]
        slot = (chosen[:, None, :] == target_clusters[:, :, None]).int().argmax(dim=-1)  # [n, K]
        where = slot * grouped.per + grouped.rank[ids[part]]
        logits = _candidate_logits(x[part], grouped, chosen)
        picked = logits.gather(1, where) - torch.logsumexp(logits, dim=-1, keepdim=True)
        out.append(-(probs[part] * picked).sum(dim=-1))
    return torch.cat(out)
