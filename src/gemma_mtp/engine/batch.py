"""Batched decoding with speculation: several rows share one target forward per round.

Each row ("slot") holds a request. Invariant between rounds: the target cache of a row holds every
token of `slot.tokens` but the last ("pending") one, and `hidden[row]` is the target's final hidden
state at the position before it. A round: drafts for every active row, one target forward over
[pending, drafts...] of all rows (padded with position -1), acceptance per row, rollback per row.
Plain decoding is the same round with no drafts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import ContextOverflowError
from ..media.prompt import PromptMedia
from ..models.gemma import GemmaModel
from ..ops import argmax_rows
from ..rows import pack_rows
from ..sampling import SamplingParams, make_generator, probs_from_logits
from ..speculative.acceptance import accept_greedy, accept_greedy_ids, accept_sampled
from ..speculative.autotune import Autotuner, AutotuneSession
from ..speculative.base import MAX_DRAFT, Draft, Drafter, DraftRequest, SpecOptions
from ..speculative.stats import SpecStats
from ..speculative.synthetic import SyntheticAcceptor

__all__ = ["BatchDecoder", "Slot"]


@dataclass
class Slot:
    row: int
    tokens: list[int]  # prompt + generated; the last one is pending
    n_prompt: int
    budget: int  # tokens still allowed
    sampling: SamplingParams
    spec: SpecOptions
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    stats: SpecStats = field(default_factory=SpecStats)
    stop_reason: str | None = None
    has_hidden: bool = False  # the target's hidden state before the pending token is known (MTP needs it)
    prompt_ms: float = 0.0  # prefill of all prompt tokens but the last
    first_round_ms: float = 0.0  # the round that fed the last prompt token and sampled the first token
    first_round_tokens: int = 0  # tokens that round committed (more than one when it verified drafts)
    decode_ms: float = 0.0  # every round, the first included
    tuner: AutotuneSession | None = None  # --spec-autotune: chooses this row's draft length per round
    last_round_end: float | None = None  # perf_counter when this slot's previous round ended
    last_round: tuple[int, int] = (0, 0)  # (drafted, accepted) of the latest round: its committed
    # tokens are the accepted drafts first, then the target's own token
    synthetic: SyntheticAcceptor | None = None  # benchmarking only: imposed accept decisions

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt :]

    @property
    def done(self) -> bool:
        return self.stop_reason is not None


class BatchDecoder:
    def __init__(
        self,
        target: GemmaModel,
        *,
        max_batch: int = 1,
        ctx_size: int = 4096,
        max_draft: int = MAX_DRAFT,
        drafters: dict[str, Drafter] | None = None,
        cache=None,
    ) -> None:
        self.target = target
        self.cache = cache or target.make_cache(
            batch_size=max_batch, max_context=ctx_size, max_draft=max_draft
        )
        self.ctx_size = self.cache.max_context
        self.max_draft = self.cache.max_draft
        self.drafters = drafters or {}
        self.autotuners: dict[str, Autotuner] = {}  # per strategy; what they learn outlives a request
        self.slots: list[Slot | None] = [None] * self.cache.batch_size
        self.hidden = torch.zeros(
            self.cache.batch_size, 1, target.config.hidden_size, dtype=target.dtype, device=target.device
        )

    # -- slots ---------------------------------------------------------------------------------
    def free_rows(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    def active(self) -> list[Slot]:
        return [s for s in self.slots if s is not None and not s.done]

    @torch.inference_mode()
    def add(
        self,
        prompt_ids: list[int],
        *,
        n_predict: int,
        sampling: SamplingParams,
        spec: SpecOptions,
        stop_ids: frozenset[int],
        media: PromptMedia | None = None,
    ) -> Slot:
        """Prefill a prompt into a free row and sample its first token. `media`: soft tokens written
        over the prompt's media slots (they all lie before its last token)."""
        free = self.free_rows()
        if not free:
            raise RuntimeError("no free slot")
        if len(prompt_ids) >= self.ctx_size:
            raise ContextOverflowError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {self.ctx_size} "
                "(-c/--ctx-size); raise -c or shorten the prompt"
            )
        if spec.type != "none" and spec.type not in self.drafters:
            raise ValueError(f"no drafter loaded for --spec-type {spec.type}")
        row = free[0]
        t0 = time.perf_counter()
        self.cache.reset([row])
        for drafter in self.drafters.values():
            drafter.reset_row(row)
        limit = self.ctx_size - len(prompt_ids)
        budget = limit if n_predict < 0 else min(n_predict, limit)
        generator = None if sampling.greedy else make_generator(sampling.seed, self.target.device)
        slot = Slot(
            row=row,
            tokens=list(prompt_ids),
            n_prompt=len(prompt_ids),
            budget=budget,
            sampling=sampling,
            spec=spec,
            stop_ids=stop_ids,
            generator=generator,
            stats=SpecStats(type=spec.type, n_max=spec.n_max if spec.type != "none" else 0),
        )
        if spec.synthetic is not None:
            slot.synthetic = SyntheticAcceptor(spec.synthetic)
            slot.stats.synthetic = list(spec.synthetic.rates)
        self.slots[row] = slot
        if spec.autotune and spec.type != "none":
            tuner = self.autotuners.setdefault(spec.type, Autotuner(n_cap=self.max_draft))
            slot.tuner = tuner.session(slot.stats, start=spec.n_max)
        # prefill all but the last prompt token; the last one is fed by the first round like a pending token
        slot.has_hidden = len(prompt_ids) > 1
        if slot.has_hidden:
            embeds = media.overrides(len(prompt_ids) - 1) if media else None
            _, hidden = self._forward_rows({row: prompt_ids[:-1]}, {row: 0}, embeds=embeds)
            self.hidden[row, 0] = hidden[0, len(prompt_ids) - 2].to(self.hidden.device)
        slot.prompt_ms = (time.perf_counter() - t0) * 1e3
        if budget <= 0:
            slot.stop_reason = "length" if n_predict >= 0 else "context"
        return slot

    def release(self, slot: Slot) -> None:
        self.slots[slot.row] = None

    # -- one round -------------------------------------------------------------------------------
    def _forward_rows(
        self,
        feeds: dict[int, list[int]],
        starts: dict[int, int],
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[dict[int, int], torch.Tensor]:
        """One target forward over the rows that have a feed (idle rows cost nothing; shorter feeds
        are padded). Returns ({row: index in the forward's batch}, hidden [R, T, D])."""
        rows = sorted(feeds)
        tokens, positions = pack_rows([feeds[row] for row in rows], [starts[row] for row in rows])
        dev = self.target.device
        if embeds is None:  # (a target without the media seam, e.g. a test double, still works)
            hidden = self.target(tokens.to(dev), positions.to(dev), self.cache, rows=rows).hidden
        else:
            hidden = self.target(
                tokens.to(dev), positions.to(dev), self.cache, rows=rows, embeds=embeds
            ).hidden
        return {row: i for i, row in enumerate(rows)}, hidden

    def _verify_rows(
        self, feeds: dict[int, list[int]], starts: dict[int, int]
    ) -> tuple[dict[int, int], torch.Tensor, torch.Tensor | None]:
        """A round's target forward: ({row: index}, hidden [R, T, D], logits [R, T, V] or None).
        Here None: `step` applies the head to what the acceptance needs (argmax ids for greedy
        rows, logits for the others); `GraphBatchDecoder` returns the logits its graph computed
        with the forward."""
        index, hidden = self._forward_rows(feeds, starts)
        return index, hidden, None

    def _n_draft(self, slot: Slot) -> int:
        if slot.spec.type == "none" or (slot.spec.type == "mtp" and not slot.has_hidden):
            return 0
        # leave room for the bonus token in both the budget and the cache
        room = min(slot.budget - 1, self.ctx_size - len(slot.tokens) - 1, self.max_draft)
        if slot.tuner is not None:
            return slot.tuner.choose(limit=max(0, room))
        return max(0, min(slot.spec.n_max, room))

    @torch.inference_mode()
    def step(self) -> dict[int, list[int]]:
        """Run one round for every active slot; returns the tokens each row committed."""
        slots = self.active()
        if not slots:
            return {}
        t0 = time.perf_counter()
        drafts = self._draft(slots)
        t1 = time.perf_counter()
        feeds = {s.row: [s.tokens[-1], *drafts[s.row].tokens] for s in slots}
        starts = {s.row: len(s.tokens) - 1 for s in slots}
        index, hidden, logits = self._verify_rows(feeds, starts)
        # greedy rows need only each position's argmax (the pruned output head where installed);
        # the others the logits of every position, each row's head computed once
        best = self._greedy_ids(
            [s for s in slots if s.sampling.greedy and s.synthetic is None], drafts, index, hidden, logits
        )
        at = index  # row -> its index in `logits`
        if logits is None:
            at, logits = self._head_rows([s for s in slots if s.row not in best], index, hidden)
        committed: dict[int, list[int]] = {}
        outcomes: dict[int, tuple[int, int]] = {}  # row -> (n drafted, n accepted)
        new_lengths = self.cache.lengths.clone()
        for s in slots:
            draft = drafts[s.row]
            n = len(draft.tokens)
            i = index[s.row]
            if s.synthetic is not None:
                k, nxt = s.synthetic.accept(
                    logits[at[s.row], : n + 1], draft.tokens, s.sampling, s.generator, s.stop_ids
                )
            elif s.row in best:
                k, nxt = accept_greedy_ids(best[s.row], draft.tokens)
            elif s.sampling.greedy:
                k, nxt = accept_greedy(logits[at[s.row], : n + 1], draft.tokens)
            else:
                p = probs_from_logits(logits[at[s.row], : n + 1], s.sampling)
                k, nxt = accept_sampled(p, draft.q, draft.tokens, s.generator)
            s.stats.record(n, k)
            outcomes[s.row] = s.last_round = (n, k)
            new_lengths[s.row] = starts[s.row] + k + 1
            self.hidden[s.row, 0] = hidden[i, k].to(self.hidden.device)
            s.has_hidden = True
            committed[s.row] = self._commit(s, [*draft.tokens[:k], nxt])
        self.cache.rollback(new_lengths)
        t2 = time.perf_counter()
        width = max(len(f) for f in feeds.values())  # the verify forward's positions (autotune's cost key)
        for s in slots:
            s.stats.draft_ms += (t1 - t0) * 1e3
            s.stats.verify_ms += (t2 - t1) * 1e3
            if s.tuner is not None:
                # the caller's time between rounds (streaming, detokenizing); a long gap is not
                # per-round work (a paused consumer), so it is left out
                gap = None if s.last_round_end is None else (t0 - s.last_round_end) * 1e3
                between = gap if gap is not None and gap < 1000.0 else None
                s.tuner.observe(
                    *outcomes[s.row], (t1 - t0) * 1e3, (t2 - t1) * 1e3, width=width, between_ms=between
                )
            s.last_round_end = t2
            if s.decode_ms == 0.0:
                s.first_round_ms = (t2 - t0) * 1e3
                s.first_round_tokens = len(committed.get(s.row, ()))
            s.decode_ms += (t2 - t0) * 1e3
        return committed

    def _greedy_ids(
        self,
        slots: list[Slot],
        drafts: dict[int, Draft],
        index: dict[int, int],
        hidden: torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> dict[int, list[int]]:
        """{row: the target's argmax at each verified position (the pending token, then its drafts)}
        for ``slots``, in one call over just those positions: from ``logits`` where the forward
        gave them, else through `target.argmax` (the pruned head where installed; a target without
        `argmax`, a test double, gives {} and its rows take the logits)."""
        argmax = getattr(self.target, "argmax", None)
        if not slots or (logits is None and argmax is None):
            return {}
        spans = [(s.row, index[s.row], len(drafts[s.row].tokens) + 1) for s in slots]
        if logits is not None:
            ids = argmax_rows(torch.cat([logits[i, :n] for _, i, n in spans]))
        else:
            ids = argmax(torch.cat([hidden[i, :n] for _, i, n in spans])).tolist()
        out, at = {}, 0
        for row, _, n in spans:
            out[row], at = ids[at : at + n], at + n
        return out

    def _head_rows(
        self, slots: list[Slot], index: dict[int, int], hidden: torch.Tensor
    ) -> tuple[dict[int, int], torch.Tensor | None]:
        """The logits [R', T, V] of just ``slots``' rows of ``hidden`` (rows whose argmax ids are
        known need no head) and {row: index in them}; (.., None) when no row needs them."""
        if not slots:
            return {}, None
        take = [index[s.row] for s in slots]
        rows = hidden if take == list(range(hidden.shape[0])) else hidden[take]
        return {s.row: j for j, s in enumerate(slots)}, self.target.logits(rows)

    def _draft(self, slots: list[Slot]) -> dict[int, Draft]:
        drafts = {s.row: Draft([], None) for s in slots}
        by_type: dict[str, list[DraftRequest]] = {}
        for s in slots:
            n = self._n_draft(s)
            if n > 0:
                req = DraftRequest(s.row, s.tokens, n, s.sampling, s.spec, s.generator)
                by_type.setdefault(s.spec.type, []).append(req)
        for kind, requests in by_type.items():
            for row, draft in self.drafters[kind].propose(requests, self.hidden).items():
                if len(draft.tokens) >= max(self.slots[row].spec.n_min, 1):
                    drafts[row] = draft
        return drafts

    def _commit(self, s: Slot, new: list[int]) -> list[int]:
        """Append accepted tokens, cut at a stop id or the budget, and finish the slot if needed."""
        out = []
        for token in new:
            if s.budget <= 0:
                break
            out.append(token)
            s.budget -= 1
            if token in s.stop_ids:
                s.stop_reason = "eos"
                break
        s.tokens.extend(out)
        if s.stop_reason is None and s.budget <= 0:
            s.stop_reason = "length" if len(s.tokens) < self.ctx_size else "context"
        return out
