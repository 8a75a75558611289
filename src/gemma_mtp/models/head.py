"""An exact pruned output head: each position's argmax (or top k) of the tied head without every row.

The full head multiplies the hidden state x by all V rows of a Q8_0 block matrix (`gguf_mm`: x
rounded to int8 per 32 inputs, x^; exact int32 sums per 32; float32 accumulation). Greedy decoding
needs only the argmax, so `PrunedHead` computes an upper bound U_n of every row's exact product and
the exact products (`gguf_mm_rows`, the same bits as `gguf_mm`) only for the rows whose bound
reaches the best exact value found; whatever the bound cannot decide (too many candidates,
non-finite input, a softcapped near tie) takes the full head. The answer is the full head's argmax
(first index on ties) bit for bit.

The bound (`models/head_build.py` makes its tables once per head). A probe (an identity matrix in
Q8_0) gives x^ itself as the kernel rounds it, z = fl(x^). The few inputs where the hidden state's
energy sits (its "massive" dimensions, `dense_cols`) are multiplied exactly in float32 by their
weights; every other input (B) goes through a Q4_K copy W~ of the head (the fast K-quant kernel,
about half the bytes per input), fed z, which the kernel rounds again per 256 inputs (z~).
For every row n

    W_n . x^ = W_M . x^_M + W~ . z~ + (W - W~) . x^_B + W~ . (x^_B - z~)
    U_n = dense + T + sum_g ||(W - W~)_n,g|| ||x^_g|| + sum_s ||W~_n,s|| ||x^_s - z~_s||

with the error norms per row and group g of 32-input blocks and the copy's norms per 256-input
super-block s stored (rounded up), ||x^_g|| from z, and ||x^_s - z~_s|| <= 16 half-steps of the
tier's rounding. One `addmm` adds all of them to T. Float32 rounding: every kernel product is within
gamma * sum |terms| of its real value (any order of at most D + D/16 terms, each rounded at most
twice: gamma = (D + D/16 + 16) u), sum |terms| bounded from per-row maxima; z is within u of x^;
the addmm gets (columns + 4) u of its inputs' magnitudes. Their sum is the per-position `margin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import native
from ..threads import single_thread

__all__ = ["PrunedHead", "HeadStats", "Q8_0", "Q4_K"]

Q8_0, Q4_K = 8, 12  # GGML type ids
U32 = 2.0**-24  # float32 unit roundoff
HALF_STEP = 0.5001  # |rounded_i - x_i| <= HALF_STEP * max|x_group| / 127 (nearest, float32 scale)


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


def _gamma(k: int) -> float:
    """Relative rounding of a float32 sum of at most k + k/16 terms, each rounded at most twice, in
    any order (the kernel's per-block products and zero terms): (n + 16) u, with a margin."""
    return (k + k // 16 + 16) * U32 * 1.01


def probe_matrix(width: int) -> torch.Tensor:
    """Q8_0 rows e_j (scale 1.0, code 1 at input j): `gguf_mm(x, probe)` is fl(x^), x as the
    kernel rounds it (one product code * step, every other term an exact zero)."""
    blocks = torch.zeros(width, width // 32, 34, dtype=torch.uint8)
    blocks[:, :, 1] = 0x3C  # f16 1.0 = 0x3C00, little-endian
    j = torch.arange(width)
    blocks[j, j // 32, 2 + j % 32] = 1
    return blocks.view(width, -1).contiguous()


class PrunedHead:
    """The pruned head over `data` (uint8 [V, D/32*34], the model's tied Q8_0 head).

    `dense_cols` [k]: the inputs multiplied exactly; `tier_index` [Kt]: the other inputs in the Q4_K
    copy's order, D for padding (a zero); `tier_data`: the copy (uint8 [V, Kt/256*144]); `groups`
    [Kt/32, G]: the bound's groups of the copy's 32-input blocks (one-hot); `rows` [G + Kt/256 + k,
    V] float32: the error norms per group, the copy's norms per super-block (both rounded up) and
    the dense inputs' exact weights; `consts`: per-row maxima for the rounding margin (`row_norm`
    max ||W_n||, `tier_norm` max ||W~_n||, `tier_abs` max |part| of a Q4_K weight in the kernel's
    split d*sc*q + m, `dense_norm` max ||W_n,dense||). `cap`: the final logit softcap, if any.
    """

    max_rows = 1  # positions per call answered here; more take the full head (cheaper there)
    max_candidates = 16384  # exact rows per position beyond which the full head is cheaper

    def __init__(
        self,
        *,
        data: torch.Tensor,
        dense_cols: torch.Tensor,
        tier_index: torch.Tensor,
        tier_data: torch.Tensor,
        groups: torch.Tensor,
        rows: torch.Tensor,
        consts: dict[str, float],
        cap: float | None = None,
    ) -> None:
        self.data, self.cap, self.consts = data, cap, consts
        self.width = data.shape[1] // 34 * 32
        self.probe = probe_matrix(self.width)
        self.dense_cols, self.tier_index, self.tier_data = dense_cols, tier_index, tier_data
        self.groups = groups.double().numpy()
        self.rows = rows
        n_groups, n_sb = self.groups.shape[1], tier_index.numel() // 256
        self.row_max = rows[: n_groups + n_sb].double().amax(dim=1).numpy()  # err and copy norms
        self.stats = HeadStats()

    @property
    def vocab(self) -> int:
        return self.data.shape[0]

    @property
    def extra_bytes(self) -> int:
        return self.tier_data.numel() + self.rows.numel() * 4 + self.probe.numel()

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
        out = native.module().gguf_mm(x, [self.data], [Q8_0], True)
        return out if self.cap is None else torch.tanh(out / self.cap) * self.cap

    def exact(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The full head's raw products (before any softcap) for rows ids [M, n]: float32 [M, n]."""
        return native.module().gguf_mm_rows(x, self.data, Q8_0, ids, True)

    # -- the bound ----------------------------------------------------------------------------------
    def upper(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(U [M, V] float32, margin [M] float64): every row's exact float32 product <= U + margin."""
        ops = native.module()
        with single_thread():  # 640 rows: not worth a second thread's wake-up
            z = ops.gguf_mm(x, [self.probe], [Q8_0], True)  # fl(x^): the head's own int8 activations
        zt = torch.nn.functional.pad(z, (0, 1))[:, self.tier_index]
        u = ops.gguf_mm(zt, [self.tier_data], [Q4_K], True)
        cols, margin = self._columns(z.numpy(), zt.numpy())
        with single_thread():  # one pass over V: faster on the calling thread (see sampling.py)
            u.addmm_(torch.from_numpy(cols), self.rows)
        return u, margin

    def _columns(self, z: np.ndarray, zt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The addmm's columns [M, G + S + k] (group norms of x^, bounds of ||x^_s - z~_s||, the
        dense inputs) and the rounding margin [M], from z = fl(x^) and the copy's input zt; in numpy
        (some twenty small operations, each a few times cheaper than torch's)."""
        c = self.consts
        m, d = z.shape
        t64 = zt.astype(np.float64)
        sq = np.square(t64).reshape(m, -1, 32).sum(-1)
        group = np.sqrt(sq @ self.groups) * (1 + 4 * U32)  # >= ||x^_g|| (|x^_i| <= |z_i| (1 + u))
        sb_abs = np.abs(t64).reshape(m, -1, 256)
        step = sb_abs.max(-1) / 127.0  # the copy's int8 step per 256 inputs (or a finer one)
        sb_norm = np.sqrt(sq.reshape(m, -1, 8).sum(-1))
        mis = 16 * HALF_STEP * step + 2 * U32 * sb_norm  # >= ||x^_s - z~_s||
        dense = z[:, self.dense_cols.numpy()]
        n_dense = np.sqrt(np.square(dense.astype(np.float64)).sum(-1))
        n_all = np.sqrt(np.square(z.astype(np.float64)).sum(-1)) * (1 + 4 * U32)  # >= ||x^||
        tier_norm = np.sqrt(sq.sum(-1)) + mis.sum(-1)  # >= ||z~||
        tier_l1 = (sb_abs.sum(-1) + 256 * HALF_STEP * step).sum(-1)  # >= ||z~||_1
        kt = zt.shape[1]
        eps_exact = _gamma(d) * c["row_norm"] * n_all
        eps_tier = _gamma(kt) * c["tier_abs"] * tier_l1
        eps_dense = 2 * U32 * c["dense_norm"] * n_dense  # z for x^ in the dense products
        magnitude = c["tier_norm"] * tier_norm + np.concatenate([group, mis], 1) @ self.row_max
        eps_addmm = (self.rows.shape[0] + 4) * U32 * (magnitude + c["dense_norm"] * n_dense)
        margin = (eps_exact + eps_tier + eps_dense + eps_addmm) * 1.01
        bounds = np.concatenate([group, mis], 1) * (1 + 1e-12)
        up = bounds.astype(np.float32)
        up = np.where(up < bounds, np.nextafter(up, np.float32(np.inf)), up)  # rounded up
        return np.ascontiguousarray(np.concatenate([up, dense], 1), dtype=np.float32), margin

    # -- answers -----------------------------------------------------------------------------------
    def candidates(self, x: torch.Tensor, best_of) -> list[torch.Tensor | None]:
        """Per row of x: the ascending ids whose upper bound reaches ``best_of(u) [M]`` (an exact
        value reached by some row, found from the upper bounds u), or None (take the full head)."""
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1e30:
            return [None] * x.shape[0]
        u, margin = self.upper(x)
        best = best_of(u).double().numpy()
        cut = best - margin - self._cap_margin(best)
        cut32 = cut.astype(np.float32)
        cut32 = np.where(cut32 > cut, np.nextafter(cut32, np.float32(-np.inf)), cut32)  # rounded down
        out: list[torch.Tensor | None] = []
        upper = u.numpy()
        for row in range(x.shape[0]):
            # numpy's flatnonzero: ~5x faster than torch's nonzero over one row of V here
            ids = np.flatnonzero(upper[row] >= cut32[row]) if np.isfinite(cut[row]) else None
            ok = ids is not None and 0 < ids.size <= self.max_candidates
            out.append(torch.from_numpy(ids) if ok else None)
        return out

    def _cap_margin(self, best: np.ndarray) -> np.ndarray:
        """With a softcap, raw values a little below the best can round to the same capped value:
        lower the cut by 16 capped ulps over the cap's slope there (inf: no pruning past 3 caps)."""
        if self.cap is None:
            return np.zeros_like(best)
        raw = np.abs(best) + 1.0
        slope = np.cosh(raw / self.cap) ** -2.0
        ulp = float(np.finfo(np.float32).eps) * self.cap
        return np.where(raw < 3 * self.cap, 16 * ulp / slope, np.inf)

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
