"""Drafting with a separate small target of the same vocabulary (e.g. E2B for 31B).

The draft model keeps its own cache. Before each round it is brought up to date with the row's
committed tokens (rolled back past anything the target rejected, then fed what it has not seen),
and then drafts autoregressively.
"""

from __future__ import annotations

import torch

from ..config import TextConfig
from ..errors import ModelFormatError
from ..models.gemma import GemmaModel
from ..rows import pack_rows
from .base import MAX_DRAFT, Draft, DraftCollector, DraftRequest

__all__ = ["DraftModelDrafter"]


class DraftModelDrafter:
    name = "draft"

    def __init__(
        self, target_config: TextConfig, draft: GemmaModel, *, batch_size: int, max_context: int
    ) -> None:
        if not isinstance(draft, GemmaModel):
            raise ModelFormatError(
                "--spec-type draft needs a small target model as -md, not an MTP assistant"
            )
        if draft.config.vocab_size != target_config.vocab_size:
            raise ModelFormatError(
                f"vocabulary mismatch: draft model {draft.config.vocab_size} tokens, "
                f"target {target_config.vocab_size}; the draft model must share the target's tokenizer"
            )
        self.model = draft
        self.cache = draft.make_cache(batch_size=batch_size, max_context=max_context, max_draft=MAX_DRAFT)

    @torch.inference_mode()
    def propose(self, requests: list[DraftRequest], hidden: torch.Tensor) -> dict[int, Draft]:
        if not requests:
            return {}
        dev = self.model.device
        batch = self.cache.batch_size
        # 1. sync: keep the cached prefix that is still committed, feed the rest plus the pending token
        lengths = self.cache.lengths.clone()
        feeds: dict[int, list[int]] = {}
        for r in requests:
            keep = min(int(lengths[r.row]), len(r.tokens) - 1)
            lengths[r.row] = keep
            feeds[r.row] = r.tokens[keep:]
        self.cache.rollback(lengths)
        rows = list(feeds)
        tokens, positions = pack_rows(
            [feeds[r] for r in rows], [int(lengths[r]) for r in rows], batch=batch, rows=rows
        )
        hidden_out = self.model(tokens.to(dev), positions.to(dev), self.cache).hidden
        last = torch.tensor([len(feeds.get(row, [0])) - 1 for row in range(batch)], device=dev)
        h = hidden_out[torch.arange(batch, device=dev), last][:, None]  # [B, 1, D]
        # 2. draft: one forward per further step over the rows still drafting
        collect = DraftCollector(requests)
        while collect.active:
            logits = self.model.logits(h)[:, 0]
            step_tokens = torch.zeros(batch, 1, dtype=torch.long)
            step_pos = torch.full((batch, 1), -1, dtype=torch.long)
            for row in list(collect.active):
                drafted = collect.offer(row, logits[row])
                if drafted is not None and row in collect.active:  # fed only if it drafts again
                    step_tokens[row, 0] = drafted
                    step_pos[row, 0] = int(self.cache.lengths[row])
            if not collect.active:
                break
            h = self.model(step_tokens.to(dev), step_pos.to(dev), self.cache).hidden
        return collect.drafts()

    def reset_row(self, row: int) -> None:
        self.cache.reset([row])
