"""Draft-length autotune (`--spec-autotune`): pick n_max each round, 0 = no drafting.

The controller maximises expected committed tokens per second. For a draft length n,

    tokens(n) = 1 + sum_{i<=n} prod_{j<=i} q_j * a_j
    cost(n)   = draft(n) + sum_m P(m drafted | n) * verify(m + 1) + between

with a_j the conditional acceptance at draft position j (position j is accepted given that j-1
was), q_j the chance that the drafter produces a j-th token at all (n-gram lookups and p_min stop
early), draft(n) the measured drafting time for a request of n, and verify(k) the measured target
forward over k positions, and `between` the engine's own time per round outside drafting and
verifying (streaming, detokenizing, stop checks: paid once per round whatever n is, so ignoring
it undervalues drafting). All of them are learned online: acceptance and availability as decayed
counts per position (an EWMA over outcomes; positions rarely reached drift back to an optimistic
prior), costs as the median of each width's recent timings pooled through an affine fit over
widths (see `_Costs`). Every few rounds the controller probes a neighbour of its current best
(one deeper more often, less often when the neighbour is clearly worse), so that the estimates
stay true. When recent first-position acceptance departs sharply from the older estimate (a new
kind of text), the acceptance model is rebuilt from the recent rounds only; costs are kept.

`Autotuner` holds what is learned (per decoder and strategy, so it outlives a request);
`AutotuneSession` is one request's view: it chooses, observes, and records what it chose into the
request's stats (`stats.autotune = {"chosen": [...], "final": n, "probes": ..., "resets": ...}`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AUTOTUNE_N_CAP", "AutotuneConfig", "Autotuner", "AutotuneSession"]

AUTOTUNE_N_CAP = 8  # the longest draft the controller considers (the cache allows up to MAX_DRAFT)


@dataclass(frozen=True, kw_only=True)
class AutotuneConfig:
    n_cap: int = AUTOTUNE_N_CAP
    half_life: float = 32.0  # outcomes at a position after which an older one weighs half
    forget_half_life: float = 256.0  # rounds after which any evidence weighs half, tried or not
    prior_acceptance: float = 0.5  # a_1 before any evidence; deeper positions inherit a_{j-1}
    prior_weight: float = 2.0  # pseudo-events behind every prior
    cost_window: int = 9  # a width's cost is the median of its last timings (spikes are noise) ...
    cost_shrink: float = 3.0  # ... pulled toward an affine fit of all widths with this many pseudo-samples
    cost_max_age: int = 256  # rounds after which a width's timings give way to fresher widths'
    verify_slope: float = 0.1  # one width measured: each extra position costs this fraction more
    draft_ratio: float = 0.1  # unmeasured drafting: this fraction of verify(1) per drafted token
    probe_every: int = 10  # mean rounds between neighbour probes (0: never probe)
    probe_backoff: float = 0.1  # a neighbour estimated this much slower: double the gap (up to 8x)
    switch_margin: float = 0.02  # leave the current n only for a >2% better estimate
    shift_window: int = 32  # drafted rounds whose first-position acceptance is compared with older ones
    shift_min: float = 0.25  # ... a change at least this large
    shift_z: float = 4.0  # ... and this many standard errors: then the workload shifted
    seed: int = 0


class _Ratio:
    """Decayed success/attempt counts for one draft position."""

    __slots__ = ("hits", "tries")

    def __init__(self) -> None:
        self.hits = 0.0
        self.tries = 0.0

    def add(self, hit: bool, decay: float) -> None:
        self.scale(decay)
        self.hits += float(hit)
        self.tries += 1.0

    def scale(self, factor: float) -> None:
        self.hits *= factor
        self.tries *= factor

    def estimate(self, prior: float, weight: float) -> float:
        return (self.hits + prior * weight) / (self.tries + weight)


class _Costs:
    """Timings by key (verify width, or requested draft length): each key's recent median, shrunk
    toward an affine fit over every key (costs grow smoothly with width, and pooling keeps a
    rarely measured width from resting on one noisy sample).

    The first timing of a key is dropped once a second one arrives (a new shape's first forward
    pays for kernel selection and allocation). A key with few timings is never judged dearer than
    the fit of the other keys says: a slow spell during its first probe must not bar it for good.
    The fit's slope stays between 0 and linear scaling from the cheapest key per position. Keys
    last timed more than `max_age` rounds ago are left out while fresher ones exist (costs drift
    with context length and batch composition).
    """

    def __init__(
        self, window: int, shrink: float, max_age: int, lone_slope: Callable[[int, float], float]
    ) -> None:
        self.window = window
        self.shrink = shrink
        self.max_age = max_age
        self.lone_slope = lone_slope  # slope to assume when a single key has been measured
        self.samples: dict[int, deque[float]] = {}
        self.last_seen: dict[int, int] = {}  # key -> round of its latest timing
        self.now = 0
        self._first: set[int] = set()  # keys whose window still holds their first timing
        self._cache: dict[int | str, float | None] = {}  # estimates since the last timing

    def add(self, key: int, ms: float, now: int) -> None:
        self.now = now
        self.last_seen[key] = now
        window = self.samples.setdefault(key, deque(maxlen=self.window))
        if key in self._first:
            window.popleft()
            self._first.discard(key)
        elif not window:
            self._first.add(key)
        window.append(ms)
        self._cache.clear()

    def medians(self) -> dict[int, float]:
        """Median timing per key, fresh keys only (all keys when none is fresh)."""
        fresh = [k for k, t in self.last_seen.items() if self.now - t <= self.max_age] or self.last_seen
        return {k: statistics.median(self.samples[k]) for k in sorted(fresh)}

    def dispersion(self) -> float:
        """Typical relative spread of a key's timings: the median over keys of MAD / median."""
        if "dispersion" not in self._cache:
            spreads = []
            for window in self.samples.values():
                if len(window) >= 3:
                    mid = statistics.median(window)
                    spreads.append(statistics.median(abs(x - mid) for x in window) / mid if mid > 0 else 0.0)
            self._cache["dispersion"] = statistics.median(spreads) if spreads else 0.0
        return self._cache["dispersion"]

    def estimate(self, key: int) -> float | None:
        if key not in self._cache:
            self._cache[key] = self._estimate(key)
        return self._cache[key]

    def _estimate(self, key: int) -> float | None:
        medians = self.medians()
        if not medians:
            return None
        n = len(self.samples[key]) if key in medians else 0
        fit = _affine(medians, {k: len(self.samples[k]) for k in medians}, self.lone_slope)(key)
        if not n:
            return fit
        shrunk = (n * medians[key] + self.shrink * fit) / (n + self.shrink)
        others = {k: m for k, m in medians.items() if k != key}
        if n < 3 and others:
            weights = {k: len(self.samples[k]) for k in others}
            return min(shrunk, _affine(others, weights, self.lone_slope)(key))
        return shrunk


def _affine(
    medians: dict[int, float], weights: dict[int, int], lone_slope: Callable[[int, float], float]
) -> Callable[[int], float]:
    """Weighted least-squares line through the medians, slope clamped to [0, cheapest ms per key]."""
    total = sum(weights.values())
    mean_k = sum(w * k for k, w in weights.items()) / total
    mean_ms = sum(weights[k] * m for k, m in medians.items()) / total
    spread = sum(w * (k - mean_k) ** 2 for k, w in weights.items())
    if spread > 0:
        slope = sum(weights[k] * (k - mean_k) * (m - mean_ms) for k, m in medians.items()) / spread
    else:
        slope = lone_slope(int(mean_k), mean_ms)
    slope = min(max(slope, 0.0), min(m / k for k, m in medians.items()))
    return lambda key: max(mean_ms + slope * (key - mean_k), 1e-3 * mean_ms)


class Autotuner:
    """The learned state: per-position acceptance and availability, per-width costs."""

    def __init__(self, config: AutotuneConfig | None = None, *, n_cap: int | None = None) -> None:
        self.config = config or AutotuneConfig()
        self.n_cap = self.config.n_cap if n_cap is None else min(n_cap, self.config.n_cap)
        self.rng = random.Random(self.config.seed)
        self.decay = 0.5 ** (1.0 / self.config.half_life)
        self.forget = 0.5 ** (1.0 / self.config.forget_half_life)
        cfg = self.config
        self.verify = _Costs(
            cfg.cost_window, cfg.cost_shrink, cfg.cost_max_age, lambda k, ms: cfg.verify_slope * ms
        )
        self.draft = _Costs(cfg.cost_window, cfg.cost_shrink, cfg.cost_max_age, lambda k, ms: ms / k)  # by n
        self.between: deque[float] = deque(maxlen=cfg.cost_window)  # ms per round outside the round
        self.rounds = 0
        self.current = -1  # the n in force; -1 until the first session sets its start
        self.resets = 0
        self.probe_gap = self.config.probe_every
        self.until_probe = self.probe_gap
        self._reset_acceptance()

    def _reset_acceptance(self) -> None:
        self.accept = [_Ratio() for _ in range(self.n_cap)]  # a_j, j = 1..n_cap
        self.avail = [_Ratio() for _ in range(self.n_cap)]  # q_j
        self.recent: deque[tuple[int, int, int]] = deque(maxlen=self.config.shift_window)
        self.old_hits = 0.0
        self.old_tries = 0.0

    def session(self, stats: Any = None, *, start: int = 3) -> AutotuneSession:
        if self.current < 0:
            self.current = max(0, min(start, self.n_cap))
        return AutotuneSession(self, stats)

    # -- the model ------------------------------------------------------------------------------
    def acceptance(self) -> list[float]:
        """Conditional acceptance a_j per position j = 1..n_cap."""
        out, prior = [], self.config.prior_acceptance
        for ratio in self.accept:
            prior = ratio.estimate(prior, self.config.prior_weight)
            out.append(prior)
        return out

    def availability(self) -> list[float]:
        """q_j: the chance the drafter proposes a j-th token when asked for at least j."""
        out, prior = [], 1.0
        for ratio in self.avail:
            prior = ratio.estimate(prior, self.config.prior_weight)
            out.append(prior)
        return out

    def verify_cost(self, width: int) -> float:
        """ms of a target forward over `width` positions (arbitrary units until one is measured)."""
        ms = self.verify.estimate(width)
        return 1.0 + self.config.verify_slope * (width - 1) if ms is None else ms

    def draft_cost(self, n: int) -> float:
        if n == 0:
            return 0.0
        ms = self.draft.estimate(n)
        return self.config.draft_ratio * self.verify_cost(1) * n if ms is None else ms

    def expected(
        self, n: int, a: list[float] | None = None, q: list[float] | None = None
    ) -> tuple[float, float]:
        """(expected committed tokens, expected ms) of one round drafting up to n tokens."""
        a = self.acceptance() if a is None else a
        q = self.availability() if q is None else q
        tokens, reach, verify = 1.0, 1.0, 0.0
        p_drafted = 1.0  # P(at least m tokens drafted)
        for m in range(n + 1):
            p_more = p_drafted * q[m] if m < n else 0.0
            verify += (p_drafted - p_more) * self.verify_cost(m + 1)
            if m < n:
                reach *= q[m] * a[m]
                tokens += reach
            p_drafted = p_more
        return tokens, self.draft_cost(n) + verify + self.between_cost()

    def between_cost(self) -> float:
        return statistics.median(self.between) if self.between else 0.0

    def rates(self) -> list[float]:
        """Expected committed tokens per ms for n = 0..n_cap."""
        a, q = self.acceptance(), self.availability()
        out = []
        for n in range(self.n_cap + 1):
            tokens, ms = self.expected(n, a, q)
            out.append(tokens / ms)
        return out

    def best(self, rates: list[float] | None = None) -> int:
        rates = self.rates() if rates is None else rates
        top = max(range(len(rates)), key=rates.__getitem__)
        cur = self.current
        # Noisy timings (a shared, loaded machine) cannot tell close draft lengths apart: then only
        # a difference larger than the noise moves the controller off its current choice.
        margin = max(self.config.switch_margin, 0.5 * self.verify.dispersion())
        if 0 <= cur <= self.n_cap and rates[top] <= rates[cur] * (1.0 + margin):
            return cur
        return top

    def choose(self) -> int:
        """This round's n: the best estimate, or now and then a neighbour of it (a probe)."""
        cfg = self.config
        rates = self.rates()
        best = self.best(rates)
        if best != self.current:
            self.current = best
            self.probe_gap = cfg.probe_every  # explore around a new optimum at the base rate
        self.until_probe -= 1
        if self.until_probe > 0 or cfg.probe_every <= 0:
            return best
        # one deeper twice as often as one shallower: deeper probes also learn the next position
        options = [m for m in (best + 1, best + 1, best - 1) if 0 <= m <= self.n_cap]
        n = self.rng.choice(options) if options else best
        if rates[n] < (1.0 - cfg.probe_backoff) * rates[best]:  # clearly worse: probe less often
            self.probe_gap = min(self.probe_gap * 2, cfg.probe_every * 8)
        else:
            self.probe_gap = cfg.probe_every
        self.until_probe = self.rng.randint(max(1, self.probe_gap // 2), self.probe_gap + self.probe_gap // 2)
        return n

    # -- learning -------------------------------------------------------------------------------
    def observe(
        self,
        n_requested: int,
        n_drafted: int,
        n_accepted: int,
        draft_ms: float,
        verify_ms: float,
        width: int,
        between_ms: float | None = None,
    ) -> None:
        self.rounds += 1
        self.verify.add(width, verify_ms, self.rounds)
        if between_ms is not None:
            self.between.append(between_ms)
        if n_requested > 0:
            self.draft.add(n_requested, draft_ms, self.rounds)
        self._learn(n_requested, n_drafted, n_accepted)
        if n_drafted > 0:
            self._watch_shift((n_requested, n_drafted, n_accepted))

    def _learn(self, n_requested: int, n_drafted: int, n_accepted: int) -> None:
        # Every position forgets slowly, tried or not: one that is rarely reached drifts back to its
        # prior (the position before it), which is optimistic, and so gets tried again in time.
        for ratio in (*self.accept, *self.avail):
            ratio.scale(self.forget)
        for j in range(min(n_requested, self.n_cap)):
            self.avail[j].add(j < n_drafted, self.decay)
            if j >= n_drafted:
                break
        # position j is judged only if every earlier draft was accepted
        for j in range(min(n_drafted, n_accepted + 1, self.n_cap)):
            self.accept[j].add(j < n_accepted, self.decay)

    def _watch_shift(self, outcome: tuple[int, int, int]) -> None:
        """Compare the first position's recent acceptance with the older rounds'; rebuild on a jump."""
        cfg = self.config
        if len(self.recent) == self.recent.maxlen:
            self.old_hits = self.old_hits * self.decay + min(self.recent[0][2], 1)
            self.old_tries = self.old_tries * self.decay + 1.0
        self.recent.append(outcome)
        if self.old_tries < cfg.shift_window / 2 or len(self.recent) < self.recent.maxlen:
            return
        p_old = self.old_hits / self.old_tries
        p_new = sum(min(k, 1) for _, _, k in self.recent) / len(self.recent)
        spread = math.sqrt(max(p_old * (1.0 - p_old), 0.05) * (1.0 / len(self.recent) + 1.0 / self.old_tries))
        if abs(p_new - p_old) >= cfg.shift_min and abs(p_new - p_old) >= cfg.shift_z * spread:
            recent = list(self.recent)
            self._reset_acceptance()
            self.resets += 1
            self.probe_gap = cfg.probe_every
            for n_req, d, k in recent:  # the new regime starts from what the recent rounds saw
                self._learn(n_req, d, k)
                self.recent.append((n_req, d, k))


class AutotuneSession:
    """One request: `choose(limit)` before drafting, `observe(...)` after verifying."""

    def __init__(self, tuner: Autotuner, stats: Any = None) -> None:
        self.tuner = tuner
        self.stats = stats
        self.chosen = [0] * (tuner.n_cap + 1)
        self.probes = 0
        self.resets_at_start = tuner.resets
        self._requested = 0

    def choose(self, limit: int) -> int:
        """The draft length for this round (at most `limit`, the room left in budget and cache)."""
        n = self.tuner.choose()
        self.chosen[n] += 1
        self.probes += n != self.tuner.current
        self._requested = max(0, min(n, limit))
        return self._requested

    def observe(
        self,
        n_drafted: int,
        n_accepted: int,
        draft_ms: float,
        verify_ms: float,
        *,
        width: int | None = None,
        between_ms: float | None = None,
    ) -> None:
        """Feed one round's outcome; `width` is the target forward's width (default n_drafted + 1);
        `between_ms` the time since this request's previous round ended (None: unknown)."""
        width = n_drafted + 1 if width is None else width
        self.tuner.observe(self._requested, n_drafted, n_accepted, draft_ms, verify_ms, width, between_ms)
        self._requested = 0
        if self.stats is not None:
            self.stats.autotune = self.report()

    def report(self) -> dict[str, Any]:
        return {
            "chosen": list(self.chosen),
            "final": self.tuner.current,
            "probes": self.probes,
            "resets": self.tuner.resets - self.resets_at_start,
        }
