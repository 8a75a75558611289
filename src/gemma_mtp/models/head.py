"""An exact pruned output head: each position's argmax (or top k) of the tied head without every row.

The full head multiplies the hidden state by all V rows of a GGUF block matrix (`gguf_mm`: the
activations rounded to int8 per 32 inputs, exact int32 sums per 32, float32 accumulation). Greedy
decoding needs only the argmax, so `PrunedHead` computes a cheap approximation `T` of every row's
product, a rigorous bound `S` on |exact - T|, and the exact products (`gguf_mm_rows`, the same bits
as `gguf_mm`) only for the rows whose upper bound `T + S` reaches the best exact value found.

The approximation (`models/head_build.py` makes it once per head): the units (weight blocks) of the
inputs that carry most of the hidden state's energy keep their own bytes (exact), the others are
re-quantized to Q4_0 (half the bytes). Both parts are fed the same 32-input blocks of x as the full
head, so the kernel rounds them to the same int8 activations x^; only the re-quantized weights
differ, by e = W - W~, and for every row n

    |exact_n - T_n| <= sum over groups g of ||e_n,g|| * ||x^_g||  (+ the float32 rounding below),

with ||e_n,g|| stored per row (a few groups of input blocks, rounded up) and ||x^_g|| bounded from
x alone (each x^_i is within half an int8 step of x_i). The float32 accumulation of every product
(any order of at most D + D/16 terms, each rounded at most twice) is bounded by
gamma * sum |terms| with gamma = (D + D/16 + 16) u, and sum |terms| by Cauchy-Schwarz from per-part
row-norm maxima; adding T's parts and the bound itself in float32 gets its own (G + 4) u term.
Whatever the bound cannot decide (too many candidates, non-finite input, a softcapped near tie)
takes the full head, so the result is the full head's argmax (first index on ties) bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import native
from ..threads import single_thread

__all__ = ["PrunedHead", "HeadStats"]

U32 = 2.0**-24  # float32 unit roundoff
HALF_STEP = 0.5001  # |x^_i - x_i| <= HALF_STEP * max|x_block| / 127 (round to nearest, float32 scale)
SQRT32 = 32**0.5


@dataclass
class HeadStats:
    """Cumulative counts (the benchmark reads them): positions answered, exact rows computed, and
    positions that took the full head (inconclusive bound, non-finite input)."""

    positions: int = 0
    exact_rows: int = 0
    full_rows: int = 0
    calls: int = 0

    def rows_per_position(self) -> float:
        return self.exact_rows / max(1, self.positions)


class PrunedHead:
    """The pruned head over `data` (uint8 [V, bytes] GGUF blocks of `qtype`, the model's tied head).

    `a_cols`/`a_data`: the inputs and bytes of the units kept exact; `b_cols`/`b_data`: the other
    inputs and their re-quantization (`b_qtype`); `groups` [nb32, G] one-hot: the bound's groups of
    32-input blocks; `err` [G, V]: ||e_n,g|| rounded up; `consts`: the row-norm maxima of the
    rounding bound (`row_norm`, `a_norm`, `b_norm`: max ||W_n|| over the head, the exact units and
    the re-quantized ones; `b_abs`: the largest |weight part| per input of the re-quantized units).
    `cap`: the final logit softcap (None for Gemma 3).
    """

    max_rows = 2  # positions per call answered here; more take the full head (cheaper there)
    max_candidates = 16384  # exact rows per position beyond which the full head is cheaper

    def __init__(
        self,
        *,
        data: torch.Tensor,
        qtype: int,
        a_cols: torch.Tensor,
        a_data: torch.Tensor,
        a_qtype: int,
        b_cols: torch.Tensor,
        b_data: torch.Tensor,
        b_qtype: int,
        groups: torch.Tensor,
        err: torch.Tensor,
        consts: dict[str, float],
        cap: float | None = None,
    ) -> None:
        self.data, self.qtype, self.cap = data, qtype, cap
        self.a_cols, self.a_data, self.a_qtype = a_cols, a_data, a_qtype
        self.b_cols, self.b_data, self.b_qtype = b_cols, b_data, b_qtype
        self.groups = groups.double()
        self.err, self.err_max = err, err.double().amax(dim=1)
        self.consts = consts
        self.a_blocks = a_cols.view(-1, 32)[:, 0] // 32
        self.b_blocks = b_cols.view(-1, 32)[:, 0] // 32
        self.stats = HeadStats()

    @property
    def vocab(self) -> int:
        return self.data.shape[0]

    @property
    def width(self) -> int:
        return self.a_cols.numel() + self.b_cols.numel()

    @property
    def extra_bytes(self) -> int:
        return self.a_data.numel() + self.b_data.numel() + self.err.numel() * 4

    def applies(self, x: torch.Tensor) -> bool:
        """Whether `argmax`/`top_k` answer for x [M, D] (else the caller takes the full head)."""
        return (
            x.dim() == 2
            and x.dtype == torch.float32
            and x.is_cpu
            and 0 < x.shape[0] <= self.max_rows
            and x.shape[1] == self.width
            and not x.requires_grad
        )

    # -- the exact head ---------------------------------------------------------------------------
    def full_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The full head's logits for x [M, D] (what `GemmaModel.logits` gives), float32 [M, V]."""
        out = native.module().gguf_mm(x, [self.data], [self.qtype], True)
        return out if self.cap is None else torch.tanh(out / self.cap) * self.cap

    def exact(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The full head's raw products (before any softcap) for rows ids [M, n]: float32 [M, n]."""
        return native.module().gguf_mm_rows(x, self.data, self.qtype, ids, True)

    # -- the approximation and its bound -------------------------------------------------------
    def bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From x [M, D] alone: (xg [M, G] float32, upper bounds of ||x^_g|| for the bound's groups
        of 32-input blocks; margin [M] float64, the float32 rounding of the exact products, of T and
        of U = T + xg @ err together), so that every row's exact float32 product <= U + margin."""
        c = self.consts
        m, d = x.shape
        xb = x.double().view(m, d // 32, 32)
        step = xb.abs().amax(-1) / 127.0
        # per 32-input block, upper bounds of ||x^_b||_2 and ||x^_b||_1 (|x^_i - x_i| <= half a step)
        norm2 = (xb.square().sum(-1).sqrt() + SQRT32 * HALF_STEP * step) * (1 + 1e-12)
        norm1 = (xb.abs().sum(-1) + 32 * HALF_STEP * step) * (1 + 1e-12)
        sq = norm2.square()
        xg = (sq @ self.groups).sqrt() * (1 + 1e-12)
        n_all = sq.sum(-1).sqrt()
        n_a = sq[:, self.a_blocks].sum(-1).sqrt()
        n_b = sq[:, self.b_blocks].sum(-1).sqrt()
        l1_b = norm1[:, self.b_blocks].sum(-1)
        gamma = (d + d // 16 + 16) * U32 * 1.01  # any order of <= d + d/16 terms, 2 roundings each
        eps_exact = gamma * c["row_norm"] * n_all  # sum |terms| <= ||W_n|| ||x^|| (no zero terms)
        t_max = c["a_norm"] * n_a + c["b_norm"] * n_b  # >= |T_n|
        eps_t = gamma * (c["a_norm"] * n_a + c["b_abs"] * l1_b) + 2 * U32 * t_max
        eps_u = (self.err.shape[0] + 4) * U32 * (t_max + xg @ self.err_max)
        margin = (eps_exact + eps_t + eps_u) * 1.01
        return _round_up(xg), margin

    def upper(self, x: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        """U [M, V] float32: the approximation T (the re-quantized units' products plus the exact
        units') plus the bound xg @ err on what the re-quantization changed."""
        ops = native.module()
        xb = x if self.b_cols.numel() == x.shape[1] else x[:, self.b_cols]
        u = ops.gguf_mm(xb, [self.b_data], [self.b_qtype], True)
        a = (
            ops.gguf_mm(x[:, self.a_cols], [self.a_data], [self.a_qtype], True)
            if self.a_cols.numel()
            else None
        )
        with single_thread():  # one pass over V each: faster on the calling thread (sampling.py)
            u.addmm_(xg, self.err)
            return u if a is None else u.add_(a)

    # -- answers -----------------------------------------------------------------------------------
    def candidates(self, x: torch.Tensor, best_of) -> list[torch.Tensor | None]:
        """Per row of x: the ascending ids whose upper bound reaches ``best_of(u) [M]`` (an exact
        value reached by some row, found from the upper bounds u), or None (take the full head)."""
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1e30:
            return [None] * x.shape[0]
        xg, margin = self.bound(x)
        u = self.upper(x, xg)
        best = best_of(u)
        cut = _round_down(best.double() - margin - self._cap_margin(best))
        out: list[torch.Tensor | None] = []
        with single_thread():
            for row in range(x.shape[0]):
                ids = (u[row] >= cut[row]).nonzero().squeeze(1) if bool(torch.isfinite(cut[row])) else None
                out.append(ids if ids is not None and 0 < ids.numel() <= self.max_candidates else None)
        return out

    def _cap_margin(self, best: torch.Tensor) -> torch.Tensor:
        """With a softcap, raw values a little below the best can round to the same capped value:
        lower the cut by 16 capped ulps over the cap's slope there (inf: no pruning past 3 caps)."""
        if self.cap is None:
            return torch.zeros_like(best, dtype=torch.float64)
        raw = best.double().abs() + 1.0
        slope = torch.cosh(raw / self.cap).pow(-2)
        ulp = float(torch.finfo(torch.float32).eps) * self.cap
        return torch.where(raw < 3 * self.cap, 16 * ulp / slope, torch.full_like(raw, float("inf")))

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """The full head's argmax of each row of x [M, D] (first index on ties): int64 [M]."""
        ops = native.module()

        def seed_best(u: torch.Tensor) -> torch.Tensor:
            seeds = ops.argmax_rows(u)[:, None]
            return self.exact(x, seeds)[:, 0]

        found = self.candidates(x, seed_best)
        out = torch.empty(x.shape[0], dtype=torch.long)
        for row, ids in enumerate(found):
            pick = None if ids is None else self._pick(x[row : row + 1], ids)
            if pick is None:
                pick = int(ops.argmax_rows(self.full_logits(x[row : row + 1]))[0])
                self.stats.full_rows += 1
            out[row] = pick
        self.stats.positions += x.shape[0]
        self.stats.calls += 1
        return out

    def _pick(self, x_row: torch.Tensor, ids: torch.Tensor) -> int | None:
        values = self.exact(x_row, ids[None])[0]
        self.stats.exact_rows += ids.numel()
        if not bool(torch.isfinite(values).all()):
            return None
        if self.cap is not None:
            values = torch.tanh(values / self.cap) * self.cap
            top = torch.topk(values, min(2, values.numel())).values
            # capped values this close may round apart differently on the full head's tensor
            if (
                top.numel() == 2
                and float(top[0] - top[1]) <= 8 * float(torch.finfo(torch.float32).eps) * self.cap
            ):
                return None
        return int(ids[int(values.argmax())])

    def top_k(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The full head's k largest logits of each row of x [M, D] and their ids, ordered as a
        stable descending sort of the full row orders them (ties: lower id first): float32 [M, k],
        int64 [M, k]. None when any row is inconclusive or the head is softcapped (the caller then
        takes the full logits: capped values computed on another tensor may differ in the last bit)."""
        if self.cap is not None or not 0 < k <= min(1024, self.vocab):
            return None

        def kth_best(u: torch.Tensor) -> torch.Tensor:
            with single_thread():
                seeds = torch.topk(u, k, dim=-1, sorted=False).indices
            return self.exact(x, seeds).amin(dim=-1)

        found = self.candidates(x, kth_best)
        if any(ids is None or ids.numel() < k for ids in found):
            self.stats.full_rows += x.shape[0]
            return None
        values, indices = [], []
        for row, ids in enumerate(found):
            exact = self.exact(x[row : row + 1], ids[None])[0]
            self.stats.exact_rows += ids.numel()
            if not bool(torch.isfinite(exact).all()):
                return None
            top, at = torch.sort(exact, descending=True, stable=True)
            values.append(top[:k])
            indices.append(ids[at[:k]])
        self.stats.positions += x.shape[0]
        self.stats.calls += 1
        return torch.stack(values), torch.stack(indices)


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32, never below the float64 value."""
    f = x.float()
    return torch.where(f.double() < x, torch.nextafter(f, torch.tensor(float("inf"))), f)


def _round_down(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32, never above the float64 value."""
    f = x.float()
    return torch.where(f.double() > x, torch.nextafter(f, torch.tensor(float("-inf"))), f)
