"""The opt-in `--cuda-graphs` decoder, and greedy acceptance that stays on the device.

`GraphBatchDecoder` is `BatchDecoder` whose decode and verify forwards (at most `max_draft + 1`
positions per row, no media) go through `graphs.StaticTargetStep`: captured CUDA graphs on CUDA,
the same static path run eagerly elsewhere (`GEMMA_MTP_GRAPHS_EAGER=1`). Prompt prefills and
media keep the plain forward. Its outputs are the plain decoder's, token for token (tests).

`accept_greedy_on_device` is `speculative.acceptance.accept_greedy` for a whole batch as tensor
ops (argmax, compare, cumulative product): no value is read back to the host, so a round's
acceptance and rollback (`KVCache.rollback(..., check=False)`) need no sync before the one that
emits the tokens.
"""

from __future__ import annotations

import torch

from ..models.gemma import GemmaModel
from ..rows import pack_rows
from .batch import BatchDecoder
from .graphs import StaticTargetStep, check_graphs_device

__all__ = ["GraphBatchDecoder", "accept_greedy_on_device", "committed_tokens", "HEAD_IN_GRAPH"]

# batch.py's `_verify_rows` seam (a round's forward and head in one call; proposed in issue 19):
# with it the head is captured with the forward, without it `step` applies the head itself
HEAD_IN_GRAPH = hasattr(BatchDecoder, "_verify_rows")


def accept_greedy_on_device(logits: torch.Tensor, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, T, V] of a verify forward, drafts [R, T - 1] (-1 where a row drafted fewer) ->
    (n_accepted [R], next_token [R]) as `accept_greedy` gives per row: drafts are kept while each
    is the target's argmax (torch.argmax's rule on ties: the first index); the next token is the
    argmax after the last kept draft. Tensors on the logits' device; nothing is read back."""
    best = logits.argmax(dim=-1)  # [R, T]
    match = (drafts.to(best.device) == best[:, :-1]).to(torch.int32)  # a -1 never matches
    n_accepted = match.cumprod(dim=-1).sum(dim=-1).to(torch.long)  # [R]
    next_token = best.gather(1, n_accepted[:, None]).squeeze(1)
    return n_accepted, next_token


def committed_tokens(
    drafts: torch.Tensor, n_accepted: torch.Tensor, next_token: torch.Tensor
) -> torch.Tensor:
    """[R, T]: each row's kept drafts, then its next token, then -1: what one host read emits."""
    n_rows, width = drafts.shape[0], drafts.shape[1] + 1
    cols = torch.arange(width, device=n_accepted.device)[None, :]
    padded = torch.cat([drafts.to(n_accepted.device), drafts.new_full((n_rows, 1), -1)], dim=1)
    out = torch.where(cols < n_accepted[:, None], padded, -1)
    return torch.where(cols == n_accepted[:, None], next_token[:, None], out)


class GraphBatchDecoder(BatchDecoder):
    """A `BatchDecoder` whose short forwards run on static buffers (CUDA graphs on CUDA)."""

    def __init__(self, target: GemmaModel, **kwargs) -> None:
        super().__init__(target, **kwargs)
        graphs = check_graphs_device(target.device)
        self.static = StaticTargetStep(
            target, self.cache, max_positions=self.max_draft + 1, graphs=graphs, with_logits=HEAD_IN_GRAPH
        )

    def _static(self, feeds, starts):
        rows = sorted(feeds)
        tokens, positions = pack_rows([feeds[row] for row in rows], [starts[row] for row in rows])
        return {row: i for i, row in enumerate(rows)}, self.static.run(tokens, positions, rows)

    def _forward_rows(self, feeds, starts, embeds=None):
        width = max(len(feed) for feed in feeds.values())
        if HEAD_IN_GRAPH or embeds is not None or not self.static.fits(width):
            return super()._forward_rows(feeds, starts, embeds=embeds)
        index, out = self._static(feeds, starts)
        return index, out.hidden

    def _verify_rows(self, feeds, starts):
        """A round's forward and head at every position, captured together (batch.py's seam)."""
        if not self.static.fits(max(len(feed) for feed in feeds.values())):
            return super()._verify_rows(feeds, starts)
        index, out = self._static(feeds, starts)
        return index, out.hidden, out.logits
