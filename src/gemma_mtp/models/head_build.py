"""Making the pruned output head (`models/head.py`) for a loaded target, once per head, cached on disk.

`install_output_head(model, mode)` runs at load. For ``pruned`` it finds the tied head (a Q8_0
block matrix read in place by the native kernel) and loads its tables from the cache
(``$GEMMA_MTP_CACHE/heads/<sha256 of the head's bytes>-...pt``) or builds them there (~10 s for the
270M, once):

1. where the hidden state's energy sits: the target's own final hidden states while it samples a few
   short continuations of <bos> (fixed seed), summed per input;
2. the `DENSE` most energetic inputs are multiplied exactly in float32 (their weights copied out);
   the others, by decreasing energy and zero-padded to a multiple of 256, get a Q4_K copy
   (`head_codes.encode_q4_k`; the bound reads back what the kernel decodes);
3. per row: the weight error's norm per group of the copy's 32-input blocks (`GROUPS`, by energy)
   and the copy's norm per super-block, in float64, rounded up to float32.

``auto`` is the full head for now: on the 2-core CPU this was measured on, the pruned head saves
too little (benchmarks/README.md, "bench_head.py") to be worth its build and memory by default.
The head's bytes are hashed on every pruned load (0.1 s for the 270M's), so a cache file can never
serve another head.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from gguf import GGMLQuantizationType

from ..assets import cache_dir
from .head import Q4_K, PrunedHead
from .head_codes import encode_q4_k, kernel_rounding_ok, q4_k_part_max

__all__ = ["HEAD_MODES", "install_output_head", "build_pruned_head", "head_weight", "input_energy"]

HEAD_MODES = ("auto", "full", "pruned")
VERSION = 2
DENSE = 8  # inputs multiplied exactly (the hidden state's "massive" dimensions)
GROUPS = 4  # groups of the copy's 32-input blocks the bound keeps one error norm per row for
CHUNK = 16384  # head rows processed at a time while building
CALIBRATION = (4, 24)  # sampled continuations of <bos>, tokens each
U32 = 2.0**-24
# float32 norms of at most 768 terms lifted past their rounding ((n + 2) u for a sum of n squares,
# one for the square root, one for the difference, 20 more for the group sums), then rounded up
LIFT = 1 + 1024 * U32


def head_weight(model: torch.nn.Module):
    """(the tied head's GGUF block weight, None) or (None, why the pruned head does not apply)."""
    table = getattr(getattr(model, "embed_tokens", None), "table", None)
    if getattr(table, "kind", None) != "gguf" or not hasattr(table, "data"):
        return None, "the output head is not a GGUF block matrix read by the native kernel"
    if table.qtype != GGMLQuantizationType.Q8_0:
        # the bound takes the head's int8 activations per 32 inputs and no zero terms: Q8_0's
        return None, f"the output head is {table.qtype.name} (the pruned head takes Q8_0)"
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return None, "the pruned head needs float32 hidden states on the CPU"
    if table.in_features % 32:
        return None, "the output head's width is not a multiple of 32"
    from .. import native

    ops = native.module()
    if ops is None:
        return None, "the native kernels are not built"
    if not kernel_rounding_ok(ops):
        return None, "the native kernel rounds activations otherwise than the bound assumes"
    return table, None


@torch.inference_mode()
def input_energy(model: torch.nn.Module, *, seed: int = 0) -> torch.Tensor:
    """Sum of squares of the final hidden state per input [D], float64, over the target's own
    sampled continuations of <bos> (top 40 at temperature 1, a fixed seed)."""
    rows, steps = CALIBRATION
    config = model.config
    bos = getattr(config, "bos_token_id", None)
    cache = model.make_cache(batch_size=rows, max_context=steps + 2, max_draft=1)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((rows, 1), 2 if bos is None else int(bos), dtype=torch.long)
    energy = torch.zeros(config.hidden_size, dtype=torch.float64)
    for step in range(steps):
        hidden = model(tokens, torch.full((rows, 1), step), cache).hidden[:, 0]
        if step:  # the state at <bos> itself is unlike any other
            energy += hidden.double().square().sum(0)
        top = torch.topk(model.logits(hidden), 40, dim=-1)
        pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
        tokens = top.indices.gather(1, pick)
    return energy


def _layout(energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense inputs [DENSE], the copy's inputs in order with the padding slot D, the one-hot
    groups [Kt/32, G] of the copy's 32-input blocks with nearly equal energies)."""
    width = energy.numel()
    order = energy.argsort(descending=True)
    dense, rest = order[:DENSE].sort().values, order[DENSE:]
    pad = (-rest.numel()) % 256
    tier = torch.cat([rest, torch.full((pad,), width, dtype=torch.long)])
    block_energy = torch.cat([energy, energy.new_zeros(1)])[tier].view(-1, 32).sum(-1)
    share = block_energy.cumsum(0) / block_energy.sum().clamp(min=1e-300)
    group = (share * GROUPS).ceil().clamp(1, GROUPS).long() - 1  # by cumulative energy
    groups = torch.zeros(block_energy.numel(), GROUPS, dtype=torch.float64)
    groups[torch.arange(block_energy.numel()), group] = 1.0
    return dense, tier, groups


def build_pruned_head(weight, energy: torch.Tensor, cap: float | None) -> PrunedHead:
    """The pruned head of ``weight`` (the Q8_0 head's `GGUFBlockWeight`) for hidden states whose
    per-input energy is ``energy``."""
    dense, tier, groups = _layout(energy)
    data, vocab = weight.data, weight.out_features
    group_of = groups.argmax(1)
    n_sb, n_groups = tier.numel() // 256, groups.shape[1]
    tier_data = torch.empty(vocab, n_sb * 144, dtype=torch.uint8)
    rows = torch.empty(n_groups + n_sb + dense.numel(), vocab, dtype=torch.float32)
    maxima = {"row_norm": 0.0, "tier_norm": 0.0, "tier_abs": 0.0, "dense_norm": 0.0}
    from .. import native

    ops = native.module()
    for lo in range(0, vocab, CHUNK):
        hi = min(vocab, lo + CHUNK)
        exact = weight.rows(torch.arange(lo, hi))  # [c, D]: the values the kernel multiplies
        if not bool(torch.isfinite(exact).all()):
            raise ValueError("the output head holds non-finite weights")
        copy_in = torch.nn.functional.pad(exact, (0, 1))[:, tier]
        blocks, scales = encode_q4_k(copy_in)
        tier_data[lo:hi] = blocks
        decoded = ops.gguf_rows(blocks.contiguous(), Q4_K, torch.arange(hi - lo), tier.numel())
        # in float32, each result lifted by its worst relative rounding (LIFT): |a - b| rounds once;
        # gguf_rows rounds d*sc*q + m once, so the weight the kernel means is within an ulp of it
        err = (copy_in - decoded).abs_().add_(decoded.abs(), alpha=2 * U32)
        block_sq = err.square_().view(hi - lo, -1, 32).sum(-1)
        group_sq = torch.zeros(hi - lo, n_groups).index_add_(1, group_of, block_sq)
        sb_norm = decoded.square().view(hi - lo, n_sb, 256).sum(-1).sqrt_()
        rows[:n_groups, lo:hi] = group_sq.sqrt_().T * LIFT
        rows[n_groups : n_groups + n_sb, lo:hi] = sb_norm.T * LIFT
        rows[n_groups + n_sb :, lo:hi] = exact[:, dense].T
        for key, norm in (("row_norm", exact), ("tier_norm", decoded), ("dense_norm", exact[:, dense])):
            maxima[key] = max(maxima[key], float(norm.norm(dim=1).max()) * LIFT)
        maxima["tier_abs"] = max(maxima["tier_abs"], q4_k_part_max(scales) * LIFT)
    return PrunedHead(
        data=data,
        dense_cols=dense,
        tier_index=tier,
        tier_data=tier_data,
        groups=groups,
        rows=rows,
        consts=maxima,
        cap=cap,
    )


# -- the cache ------------------------------------------------------------------------------------
STATE = ("dense_cols", "tier_index", "tier_data", "groups", "rows", "consts")
CONSTS = ("dense_norm", "row_norm", "tier_abs", "tier_norm")


def _cache_path(weight) -> Path:
    digest = hashlib.sha256(memoryview(weight.data.numpy()).cast("B")).hexdigest()[:32]
    params = f"v{VERSION}-d{DENSE}-g{GROUPS}-c{CALIBRATION[0]}x{CALIBRATION[1]}"
    return cache_dir() / "heads" / f"{digest}-{weight.qtype.name}-{params}.pt"


def _save(head: PrunedHead, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    state = {
        "dense_cols": head.dense_cols,
        "tier_index": head.tier_index,
        "tier_data": head.tier_data,
        "groups": torch.from_numpy(head.groups),
        "rows": head.rows,
        "consts": torch.tensor([head.consts[k] for k in CONSTS], dtype=torch.float64),
    }
    torch.save(state, tmp)
    tmp.replace(path)  # a reader sees a whole file or none


def _load(path: Path, weight, cap: float | None) -> PrunedHead | None:
    """The cached head, or None when the file is unreadable or not of this head's shape."""
    try:
        state = torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    if not isinstance(state, dict) or any(k not in state for k in STATE):
        return None
    vocab, width = weight.out_features, weight.in_features
    tier, groups = state["tier_index"], state["groups"]
    n_rows = groups.shape[1] + tier.numel() // 256 + state["dense_cols"].numel()
    if (
        state["dense_cols"].numel() + int((tier < width).sum()) != width
        or state["tier_data"].shape != (vocab, tier.numel() // 256 * 144)
        or state["rows"].shape != (n_rows, vocab)
        or groups.shape[0] != tier.numel() // 32
    ):
        return None
    return PrunedHead(
        data=weight.data,
        dense_cols=state["dense_cols"],
        tier_index=tier,
        tier_data=state["tier_data"],
        groups=groups,
        rows=state["rows"],
        consts=dict(zip(CONSTS, state["consts"].tolist(), strict=True)),
        cap=cap,
    )


def install_output_head(model: torch.nn.Module, mode: str = "auto") -> str | None:
    """Give ``model`` (a `GemmaModel`) its output head per ``mode`` (`HEAD_MODES`; ``auto`` is the
    full head for now); the load notice to show (None: nothing to say, the full head as always)."""
    if mode not in HEAD_MODES:
        raise ValueError(f"head mode {mode!r}: choose one of {', '.join(HEAD_MODES)}")
    model.output_head = None
    if mode != "pruned":
        return None
    weight, why = head_weight(model)
    if weight is None:
        return f"output head: full ({why})"
    cap = model.config.final_logit_softcapping
    t0 = time.perf_counter()
    path = _cache_path(weight)
    head = _load(path, weight, cap) if path.is_file() else None
    built = head is None
    if built:
        head = build_pruned_head(weight, input_energy(model), cap)
        _save(head, path)
    model.output_head = head
    how = f"built in {time.perf_counter() - t0:.1f} s, cached" if built else "cached"
    return (
        f"output head: pruned for greedy decoding (exact: {DENSE} inputs in float32 and a Q4_K copy "
        f"of the rest bound every row; the full head computes the rows that can win; "
        f"+{head.extra_bytes / 2**20:.0f} MiB; {how} in {path.parent})"
    )
