"""MTP drafting with a Gemma 4 assistant over the target's own hidden state and KV.

One round for a row whose pending token t sits at position p (the cache holds 0..p-1):
step 1 feeds concat(target.embed(t), h) where h is the target's hidden state at p-1; each later
step feeds concat(target.embed(previous draft), post-projected state of the previous step). Every
step queries at the same position p (transformers' SinglePositionMultiTokenCandidateGenerator).

Which KV the drafter sees: the reference slices the target's shared KV to the sequence length,
which after a partial acceptance still shows the KV of the first *rejected* draft at position p
(and nothing there after a full acceptance). We show exactly the committed positions < p, the same
after every kind of round; tests/test_speculative.py compares the acceptance of both choices.
"""

from __future__ import annotations

import torch

from ..cache import KVCache
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from ..pairing import check_pair
from .base import Draft, DraftCollector, DraftRequest, greedy_from_candidates

__all__ = ["MTPDrafter", "check_pair"]


class MTPDrafter:
    name = "mtp"

    def __init__(self, target: GemmaModel, assistant: AssistantModel, cache: KVCache) -> None:
        check_pair(target.config, assistant.config)
        self.target = target
        self.assistant = assistant
        self.cache = cache

    @torch.inference_mode()
    def propose(self, requests: list[DraftRequest], hidden: torch.Tensor) -> dict[int, Draft]:
        if not requests:
            return {}
        dev = self.target.device
        batch = self.cache.batch_size
        # the whole cache batch runs (rows not drafting this round are ignored): one forward per step
        token = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        for r in requests:
            token[r.row, 0] = r.tokens[-1]
        positions = self.cache.lengths[:, None].to(dev)
        shared = {kind: self.cache.shared_kv(kind) for kind in self.cache.config.layer_kinds}
        # every step queries `positions` over the same KV: masks and rotary tables are made once
        context = self.assistant.prepare(positions, shared)
        state = hidden
        collect = DraftCollector(requests)
        head = self.assistant.masked_embedding
        # a centroid head's greedy rows choose among its candidates (no [V] logits; same tokens)
        sparse = head is not None and head.distinct_candidates()
        vocab = self.assistant.config.text.vocab_size
        while collect.active:
            x = self.assistant.step(torch.cat([self.target.embed(token), state], dim=-1), context)
            if sparse:
                ids, cand = self.assistant.head_candidates(x)
            else:
                logits = self.assistant.head(x)
            for row in list(collect.active):
                if not sparse:
                    drafted = collect.offer(row, logits[row, 0])
                else:
                    r = collect.active[row]
                    choice = None
                    if r.sampling.greedy:
                        choice = greedy_from_candidates(ids[row, 0], cand[row, 0], vocab, r.options.p_min)
                    if choice is not None:
                        drafted = collect.offer_choice(row, choice[0], None, choice[1])
                    else:  # sampling needs the drafter's full distribution
                        drafted = collect.offer(row, head.expand(ids[row, 0], cand[row, 0], vocab))
                if drafted is not None:
                    token[row, 0] = drafted
            if collect.active:  # the next step's hidden input; none after the last step
                state = self.assistant.post_projection(x).to(dev)
        return collect.drafts()

    def reset_row(self, row: int) -> None:
        pass
