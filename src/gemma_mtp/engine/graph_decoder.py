"""The opt-in `--cuda-graphs` decoder, and greedy acceptance that stays on the device.

`GraphBatchDecoder` is `BatchDecoder` whose rounds (the pending token and its drafts: at most
`max_draft + 1` positions per row) go through `graphs.StaticTargetStep`, the target forward and
its head captured together: CUDA graphs on CUDA, the same static path run eagerly elsewhere
(`GEMMA_MTP_GRAPHS_EAGER=1`). It overrides batch.py's `_verify_rows` seam, so every row's
acceptance reads the logits the step computed (greedy rows their argmax: the pruned output head,
a CPU-only float32 path, is not used for rounds here). Prompt prefills, and with them any media,
keep the plain forward (`notice` says so at load); a round wider than the step, which the cache's
`max_draft` rules out, would take the plain forward too, logged once per width. Its outputs are
the plain decoder's, token for token (tests).

`accept_greedy_on_device` is `speculative.acceptance.accept_greedy` for a whole batch as tensor
ops (argmax, compare, cumulative product): no value is read back to the host, so a round's
acceptance and rollback (`KVCache.rollback(..., check=False)`) need no sync before the one that
emits the tokens.
"""

from __future__ import annotations

import logging

import torch

from ..models.gemma import GemmaModel
from ..rows import pack_rows
from .batch import BatchDecoder
from .graphs import EAGER_ENV, StaticTargetStep, check_graphs_device

__all__ = ["GraphBatchDecoder", "accept_greedy_on_device", "committed_tokens"]

log = logging.getLogger(__name__)


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
    """A `BatchDecoder` whose rounds run on static buffers (CUDA graphs on CUDA)."""

    def __init__(self, target: GemmaModel, **kwargs) -> None:
        super().__init__(target, **kwargs)
        self.graphs = check_graphs_device(target.device)
        self.static = StaticTargetStep(
            target, self.cache, max_positions=self.max_draft + 1, graphs=self.graphs
        )
        self._wide: set[int] = set()  # round widths already logged as taking the plain forward

    @property
    def notice(self) -> str:
        """What `--cuda-graphs` does here, for the load report."""
        how = "captured as CUDA graphs" if self.graphs else f"run eagerly ({EAGER_ENV}=1: no speed-up)"
        return (
            f"--cuda-graphs: rounds of 1..{self.static.max_positions} positions per row on static "
            f"buffers, {how}; prompt prefills (and their media) take the plain forward"
        )

    def _verify_rows(self, feeds, starts):
        """A round's forward and head at every position, captured together (batch.py's seam)."""
        width = max(len(feed) for feed in feeds.values())
        if not self.static.fits(width):
            if width not in self._wide:
                self._wide.add(width)
                log.warning(
                    "--cuda-graphs: a round of %d positions per row is wider than the static step "
                    "(1..%d): it takes the plain forward",
                    width,
                    self.static.max_positions,
                )
            return super()._verify_rows(feeds, starts)
        rows = sorted(feeds)
        tokens, positions = pack_rows([feeds[row] for row in rows], [starts[row] for row in rows])
        out = self.static.run(tokens, positions, rows)
        return {row: i for i, row in enumerate(rows)}, out.hidden, out.logits
