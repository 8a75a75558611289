"""Static KV cache: preallocated, indexed by position, O(1) rollback.

Full-attention layers keep one slot per position. Sliding-window layers keep a ring of
`window + max_draft + 1` slots, so memory does not grow with the context and rejecting up to
`max_draft` drafted tokens never evicts an entry a later query still needs. Every buffer has one
extra "trash" slot at the end: writes of padding positions (< 0) go there, so writing is branch-free.

`lengths[b]` is the number of committed positions of sequence b. A forward over positions
`lengths[b] ... lengths[b] + T - 1` writes their KV and advances `lengths`; `rollback` moves it back.
Entries past `lengths` are stale and masked by position, never copied or cleared.

Inside `static_shapes(full_span)` a forward's plan has shapes fixed by its own shape, `full_span`
and the cache's sizes, and reads nothing back to the host (no `int(tensor)`, no host-made index
tensors), so the forward can be captured in a CUDA graph and replayed (`engine/graphs.py`). The
masks are the same as without it: only slots every query ignores are added.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .config import FULL, SLIDING, TextConfig

__all__ = ["KVCache", "SharedKV", "ForwardPlan"]


@dataclass(frozen=True)
class SharedKV:
    """Read-only view of one layer's KV for a drafter (live: follows the cache's `lengths`).

    keys/values: [B, kv_heads, S, head_dim]; positions: [B, S] position held by each slot (-1 empty);
    lengths: [B]; a drafter may attend to slots with 0 <= position < lengths (and, when `window`
    is set, position >= query - window - 1, as the reference assistant does).
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    window: int | None

    def mask(self, query_positions: torch.Tensor) -> torch.Tensor:
        """[B, 1, Tq, S] boolean mask (True = attend) for queries at `query_positions` [B, Tq]."""
        pos = self.positions[:, None, :]  # [B, 1, S]
        q = query_positions[:, :, None]  # [B, Tq, 1]
        ok = (pos >= 0) & (pos < self.lengths[:, None, None])
        if self.window is not None:
            # the reference assistant attends to the last window + 1 entries before its query
            # (a bidirectional |q - kv| <= window mask, flipped); the ring keeps them (see module doc)
            ok = ok & (pos >= q - self.window - 1)
        return ok[:, None]


@dataclass(frozen=True)
class ForwardPlan:
    """Where one forward writes and what its queries may see, computed once per forward."""

    positions: torch.Tensor  # [B, T]
    full_slots: torch.Tensor  # [B, T] slot per token in full buffers (trash for padding)
    full_span: int  # number of leading full slots any query can see
    full_mask: torch.Tensor  # [B, 1, T, full_span]
    ring_slots: torch.Tensor  # [B, T] slot per token in sliding rings (trash when not kept)
    ring_positions: torch.Tensor  # [B, ring + 1] what the ring holds once this forward is written
    ring_span: int  # leading ring slots that can hold anything (all of them once the ring wrapped)
    write_first: bool  # short forwards write the ring, then attend to it; long ones attend to [ring | new]
    sliding_mask: torch.Tensor  # [B, 1, T, span] (write_first) or [B, 1, T, ring + T]
    row_index: torch.Tensor  # [B] the cache rows this forward's batch rows are
    row_select: slice | torch.Tensor  # the same rows as a slice (a view) when they are contiguous


class KVCache:
    def __init__(
        self,
        config: TextConfig,
        *,
        batch_size: int = 1,
        max_context: int = 4096,
        max_draft: int = 8,
        dtype: torch.dtype = torch.float32,
        devices: list[torch.device] | torch.device | str = "cpu",
    ) -> None:
        if isinstance(devices, (str, torch.device)):
            devices = [torch.device(devices)] * config.num_layers
        self.config = config
        self.batch_size = batch_size
        self.max_context = max_context
        self.max_draft = max_draft
        self.window = config.sliding_window
        self.ring_size = min(self.window + max_draft + 1, max_context)
        self.device = devices[0]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.written = torch.zeros(
            batch_size, dtype=torch.long, device=self.device
        )  # highest end ever written
        self.ring_positions = torch.full(
            (batch_size, self.ring_size + 1), -1, dtype=torch.long, device=self.device
        )
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.static_span: int | None = None  # set by `static_shapes`
        self._row_indexes: dict[tuple[int, ...], torch.Tensor] = {}  # made once, for static plans
        for spec in config.layers:
            if not spec.owns_kv:
                continue
            slots = (self.max_context if spec.kind == FULL else self.ring_size) + 1
            shape = (batch_size, spec.kv_heads, slots, spec.head_dim)
            self.keys[spec.index] = torch.zeros(shape, dtype=dtype, device=devices[spec.index])
            self.values[spec.index] = torch.zeros(shape, dtype=dtype, device=devices[spec.index])

    # -- bookkeeping -------------------------------------------------------------------------
    def rollback(self, lengths: torch.Tensor | list[int], *, check: bool = True) -> None:
        """Forget everything at or past `lengths[b]` (O(1): stale slots are masked by position).
        `check=False` (lengths computed on the device, e.g. by an acceptance rule that can only
        shrink them) skips the checks, which read the lengths back to the host."""
        new = torch.as_tensor(lengths, dtype=torch.long, device=self.device)
        if not check:
            self.lengths.copy_(new)
            return
        if bool((new > self.lengths).any()) or bool((new < 0).any()):
            raise ValueError(f"rollback to {new.tolist()} from {self.lengths.tolist()}: can only shrink")
        # the ring holds positions > written - ring; a query at `new` (or a drafter) needs new - window - 1 on
        oldest_needed = (new - self.window - 1).clamp(min=0)
        lost = (
            (new > 0) & (oldest_needed < self.written - self.ring_size) & (self.ring_size < self.max_context)
        )
        if bool(lost.any()):
            raise ValueError(
                f"rollback to {new.tolist()} reaches past the sliding ring (written up to "
                f"{self.written.tolist()}, ring {self.ring_size}); at most max_draft={self.max_draft} "
                "positions can be rolled back"
            )
        self.lengths.copy_(new)

    def reset(self, rows: list[int] | None = None) -> None:
        rows_t = slice(None) if rows is None else torch.as_tensor(rows, device=self.device)
        self.lengths[rows_t] = 0
        self.written[rows_t] = 0
        self.ring_positions[rows_t] = -1

    @contextmanager
    def static_shapes(self, full_span: int) -> Iterator[None]:
        """Within: full layers attend to the first `full_span` slots (the caller keeps every query
        position below it) and sliding layers to the whole ring, whatever `lengths` holds; the
        cache rows of a forward are a slice or index tensors made once per set of rows (or an
        index tensor the caller passes as `rows`). Nothing is read back to the host."""
        if not 1 <= full_span <= self.max_context:
            raise ValueError(f"static span {full_span}: use 1..{self.max_context} (the cache size)")
        previous, self.static_span = self.static_span, full_span
        try:
            yield
        finally:
            self.static_span = previous

    def memory_bytes(self) -> dict[str, int]:
        out = {FULL: 0, SLIDING: 0}
        for spec in self.config.layers:
            if spec.owns_kv:
                out[spec.kind] += 2 * self.keys[spec.index].numel() * self.keys[spec.index].element_size()
        return out

    # -- one forward ---------------------------------------------------------------------------
    def _rows(self, rows: list[int] | torch.Tensor | None) -> tuple[torch.Tensor, slice | torch.Tensor]:
        if isinstance(rows, torch.Tensor):  # an index buffer on the device (a graph's: contents vary)
            return rows, rows
        if rows is None:
            rows = list(range(self.batch_size))
        if self.static_span is None:
            index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        else:  # no host-to-device copy inside a static (captured) forward
            key = tuple(rows)
            if key not in self._row_indexes:
                self._row_indexes[key] = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            index = self._row_indexes[key]
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        return index, slice(rows[0], rows[0] + len(rows)) if contiguous else index

    def plan(self, positions: torch.Tensor, rows: list[int] | torch.Tensor | None = None) -> ForwardPlan:
        """Slots and masks for a forward over `positions` [R, T] (-1 = padding) of the cache rows
        `rows` (default: every row). Valid positions of a row must be lengths, lengths + 1, ...

        Running only the rows that have work keeps idle slots from costing compute.
        """
        positions = positions.to(self.device)
        row_index, row_select = self._rows(rows)
        lengths = self.lengths[row_select]
        valid = positions >= 0
        end = torch.where(valid, positions + 1, 0).amax(dim=1)  # [R] new length per row
        end = torch.maximum(end, lengths)
        static = self.static_span
        top = static if static is not None else int(end.max())  # static: the caller checked the end
        if top > self.max_context:
            raise ValueError(f"position {top - 1} is past the cache size {self.max_context}")
        q = positions[:, None, :, None]  # [B, 1, T, 1]

        full_span = max(top, 1)
        kv_idx = torch.arange(full_span, device=self.device)
        full_mask = (kv_idx <= q) & (q >= 0)
        full_mask[..., 0] |= ~(q[..., 0] >= 0)  # padding queries see slot 0: finite, ignored output
        full_slots = torch.where(valid, positions, self.max_context)

        ring = self.ring_size
        kept = valid & (positions >= end[:, None] - ring)  # only the last `ring` positions survive
        ring_slots = torch.where(kept, positions % ring, ring)
        rows = torch.arange(positions.shape[0], device=self.device)[:, None]
        ring_positions = self.ring_positions[row_select].clone()
        ring_positions[rows, ring_slots] = torch.where(kept, positions, -1)
        ring_positions[:, ring] = -1
        # Writing T tokens evicts positions up to (last - ring); the first query needs (first - window)
        # onwards, so up to max_draft + 1 tokens (decode, verify) can be written before attending.
        write_first = positions.shape[1] <= ring - self.window + 1
        if write_first:
            span = ring if static is not None else min(ring, top)  # filled in order until it wraps
            held = ring_positions[:, None, None, :span]  # [B, 1, 1, span]
            sliding_mask = (held >= 0) & (held <= q) & (held > q - self.window)
            sliding_mask[..., 0] |= ~(q[..., 0] >= 0)
        else:
            span = ring
            old = self.ring_positions[row_select][:, None, None, :ring]  # [R, 1, 1, ring]
            old_ok = (old >= 0) & (old < lengths[:, None, None, None]) & (old > q - self.window) & (q >= 0)
            new = positions[:, None, None, :]  # [B, 1, 1, T]
            new_ok = (new >= 0) & (new <= q) & (new > q - self.window)
            sliding_mask = torch.cat([old_ok, new_ok], dim=-1)
            sliding_mask[..., ring] |= ~(q[..., 0] >= 0)  # first new column: padding queries stay finite
        return ForwardPlan(
            positions,
            full_slots,
            full_span,
            full_mask,
            ring_slots,
            ring_positions,
            span,
            write_first,
            sliding_mask,
            row_index,
            row_select,
        )

    def attend_full(self, layer: int, plan: ForwardPlan, k: torch.Tensor, v: torch.Tensor):
        """Write this forward's KV ([R, H, T, D]) and return (keys, values, mask) to attend to."""
        kb, vb = self.keys[layer], self.values[layer]
        self._write(kb, vb, plan, plan.full_slots, k, v)
        span = plan.full_span
        select = _on(plan.row_select, kb.device)
        return kb[:, :, :span][select], vb[:, :, :span][select], plan.full_mask.to(kb.device)

    def attend_sliding(self, layer: int, plan: ForwardPlan, k: torch.Tensor, v: torch.Tensor):
        """Store the new KV in the ring and return (keys, values, mask) to attend to."""
        kb, vb = self.keys[layer], self.values[layer]
        ring = self.ring_size
        select = _on(plan.row_select, kb.device)
        if not plan.write_first:  # a long chunk would evict what its own first queries need
            keys = torch.cat([kb[:, :, :ring][select], k.to(kb.dtype)], dim=2)
            values = torch.cat([vb[:, :, :ring][select], v.to(vb.dtype)], dim=2)
        self._write(kb, vb, plan, plan.ring_slots, k, v)
        if plan.write_first:
            span = plan.ring_span
            keys, values = kb[:, :, :span][select], vb[:, :, :span][select]
        return keys, values, plan.sliding_mask.to(kb.device)

    def write_slots(self, layer: int, plan: ForwardPlan) -> tuple[torch.Tensor, ...] | None:
        """(keys, values, rows, slots): where `attend_*` would write this forward's KV of `layer`,
        for a caller that writes it itself (then `written_kv(layer, plan)` gives what to attend to);
        None when the layer's forward needs `attend_*` (a long chunk on a sliding ring)."""
        full = self.config.layers[layer].kind == FULL
        if not full and not plan.write_first:
            return None
        slots = plan.full_slots if full else plan.ring_slots
        return self.keys[layer], self.values[layer], plan.row_index, slots

    def written_kv(self, layer: int, plan: ForwardPlan):
        """(keys, values, mask) to attend to once `write_slots`' slots hold this forward's KV."""
        kb, vb = self.keys[layer], self.values[layer]
        select = _on(plan.row_select, kb.device)
        if self.config.layers[layer].kind == FULL:
            span, mask = plan.full_span, plan.full_mask
        else:
            span, mask = plan.ring_span, plan.sliding_mask
        return kb[:, :, :span][select], vb[:, :, :span][select], mask.to(kb.device)

    @staticmethod
    def _write(kb, vb, plan: ForwardPlan, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        rows = plan.row_index.to(kb.device)[:, None]
        slots = slots.to(kb.device)
        kb[rows, :, slots] = k.transpose(1, 2).to(kb.dtype)
        vb[rows, :, slots] = v.transpose(1, 2).to(vb.dtype)

    def finish(self, plan: ForwardPlan) -> None:
        """Commit a forward: record ring positions and advance `lengths`."""
        rows = plan.row_index
        self.ring_positions[rows] = plan.ring_positions
        valid = plan.positions >= 0
        end = torch.where(valid, plan.positions + 1, 0).amax(dim=1)
        self.lengths[rows] = torch.maximum(end, self.lengths[rows])
        self.written[rows] = torch.maximum(self.written[rows], end)

    def shared_kv(self, kind: str, layer: int | None = None) -> SharedKV:
        """Live view of the KV of `layer` (default: the last KV-owning layer of `kind`)."""
        layer = self.config.last_kv_owner(kind) if layer is None else layer
        if layer is None:
            raise ValueError(f"the model has no {kind} layer with its own KV")
        if kind == FULL:
            span = self.static_span or max(int(self.lengths.max()), 1)
            pos = torch.arange(span, device=self.device).expand(self.batch_size, span)
            return SharedKV(
                self.keys[layer][:, :, :span], self.values[layer][:, :, :span], pos, self.lengths, None
            )
        span = (  # slots fill in order until the ring wraps
            self.ring_size if self.static_span else max(min(self.ring_size, int(self.written.max())), 1)
        )
        return SharedKV(
            self.keys[layer][:, :, :span],
            self.values[layer][:, :, :span],
            self.ring_positions[:, :span],
            self.lengths,
            self.window,
        )


def _on(select: slice | torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    return select if isinstance(select, slice) else select.to(device)
