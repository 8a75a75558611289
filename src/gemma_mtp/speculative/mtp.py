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
from ..config import AssistantConfig, TextConfig
from ..errors import ModelFormatError
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from .base import Draft, DraftCollector, DraftRequest, greedy_from_candidates

__all__ = ["MTPDrafter", "check_pair"]


def check_pair(target: TextConfig, assistant: AssistantConfig) -> None:
    """Refuse an assistant that was not made for this target, saying which property differs."""
    if not isinstance(assistant, AssistantConfig):
        raise ModelFormatError(
            "the draft model is not an MTP assistant; use --spec-type draft for a small target"
        )
    # An assistant reads only the target's embeddings, final hidden state and KV, so a Gemma 4
    # assistant can draft for a Gemma 3 target whose shapes agree (`gemma-mtp train-drafter` makes such).
    trained_for_gemma3 = assistant.family == "gemma4" and target.family == "gemma3"
    if assistant.family != target.family and not trained_for_gemma3:
        raise ModelFormatError(
            f"architecture mismatch: a {assistant.family} assistant cannot draft for a {target.family} target"
        )
    if assistant.backbone_hidden_size != target.hidden_size:
        raise ModelFormatError(
            f"hidden size mismatch: the assistant expects a backbone of width {assistant.backbone_hidden_size}, "
            f"the target has {target.hidden_size}; use the assistant released with this target"
        )
    if assistant.vocab_size != target.vocab_size:
        raise ModelFormatError(
            f"vocabulary mismatch: assistant {assistant.vocab_size} tokens, target {target.vocab_size}"
        )
    for spec in assistant.text.layers:
        owner = target.last_kv_owner(spec.kind)
        if owner is None:
            raise ModelFormatError(f"the target has no {spec.kind} layer for assistant layer {spec.index}")
        src = target.layers[owner]
        if src.head_dim != spec.head_dim:
            raise ModelFormatError(
                f"head dim mismatch on {spec.kind}: assistant {spec.head_dim}, target {src.head_dim}"
            )
        if assistant.text.num_heads % src.kv_heads:
            raise ModelFormatError(
                f"head count mismatch on {spec.kind}: {assistant.text.num_heads} assistant query heads "
                f"cannot share the target's {src.kv_heads} KV heads"
            )


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
