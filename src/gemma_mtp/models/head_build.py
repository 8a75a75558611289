"""Making the pruned output head (`models/head.py`) for a loaded target, once per head, cached on disk.

`install_output_head(model, mode)` runs at load: it finds the tied head (a GGUF block matrix read in
place by the native kernel), and for ``auto``/``pruned`` loads its pruned head from the cache
(``$GEMMA_MTP_CACHE/heads/<sha256 of the head's bytes>-...pt``) or builds it there (a few seconds):

1. which input units carry the hidden state's energy: the target's own hidden states while it samples
   a few short continuations of <bos> (fixed seed), summed per 32-input block;
2. the units holding the top ``EXACT_SHARE`` of the inputs keep their bytes; the others are
   re-quantized to Q4_0 here (any valid encoding would do: the bound reads the values it gives);
3. per row and per group of re-quantized blocks (`GROUPS`, by energy), the norm of the weight error,
   computed in float64 and rounded up to float32.

The head's bytes are hashed on every load (0.1 s for the 270M's), so a cache file can never be
used for another head. The returned notice says which head decodes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..assets import cache_dir
from .head import PrunedHead

__all__ = ["HEAD_MODES", "install_output_head", "build_pruned_head", "head_weight", "block_energy"]

HEAD_MODES = ("auto", "full", "pruned")
VERSION = 1
EXACT_SHARE = 0.2  # share of the inputs whose units keep their own bytes (the most energetic ones)
GROUPS = 4  # groups of re-quantized 32-input blocks the bound keeps one error norm per row for
# head types whose kernel products have no separate zero term (|parts| = |weights| in the bound)
HEAD_TYPES = frozenset({GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q6_K})
Q4_0 = GGMLQuantizationType.Q4_0
CHUNK = 16384  # head rows processed at a time while building
CALIBRATION = (4, 48)  # sampled continuations of <bos>, tokens each


def head_weight(model: torch.nn.Module):
    """(the tied head's GGUF block weight, None) or (None, why the pruned head does not apply)."""
    table = getattr(getattr(model, "embed_tokens", None), "table", None)
    if getattr(table, "kind", None) != "gguf" or not hasattr(table, "data"):
        return None, "the output head is not a GGUF block matrix read by the native kernel"
    if table.qtype not in HEAD_TYPES:
        return None, f"the output head is {table.qtype.name} (the pruned head takes Q8_0 or Q6_K)"
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return None, "the pruned head needs float32 hidden states on the CPU"
    if table.in_features % 32:
        return None, "the output head's width is not a multiple of 32"
    from .. import native

    if native.module() is None:
        return None, "the native kernels are not built"
    return table, None


@torch.inference_mode()
def block_energy(model: torch.nn.Module, *, seed: int = 0) -> torch.Tensor:
    """Sum of squares of the final hidden state per 32-input block [D / 32], float64, over the
    target's own sampled continuations of <bos> (top 40 at temperature 1, a fixed seed)."""
    rows, steps = CALIBRATION
    config = model.config
    bos = config.bos_token_id if getattr(config, "bos_token_id", None) is not None else 2
    cache = model.make_cache(batch_size=rows, max_context=steps + 2, max_draft=1)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((rows, 1), int(bos), dtype=torch.long)
    energy = torch.zeros(config.hidden_size // 32, dtype=torch.float64)
    for step in range(steps):
        hidden = model(tokens, torch.full((rows, 1), step), cache).hidden[:, 0]
        if step:  # the state at <bos> itself is unlike any other
            energy += hidden.double().view(rows, -1, 32).square().sum((0, 2))
        top = torch.topk(model.logits(hidden), 40, dim=-1)
        pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
        tokens = top.indices.gather(1, pick)
    return energy


def encode_q4_0(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [R, K] -> (Q4_0 bytes uint8 [R, K/32*18], the values they decode to, float32)."""
    r, k = values.shape
    blocks = values.view(r, k // 32, 32)
    signed_max = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    d = (signed_max / -8).half()
    df = d.float()
    inv = torch.where(df != 0, 1 / torch.where(df != 0, df, torch.ones_like(df)), torch.zeros_like(df))
    q = (blocks * inv).round().add(8).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    scale = d.view(torch.uint8).view(r, k // 32, 2)
    data = torch.cat([scale, packed], -1).reshape(r, -1)
    return data, ((q.float() - 8) * df).view(r, k)


def _units(energy: torch.Tensor, unit: int) -> tuple[list[int], list[int]]:
    """(exact units, re-quantized units), each ascending; the exact ones carry the most energy."""
    per_unit = energy.view(-1, unit // 32).sum(-1)
    n_exact = round(EXACT_SHARE * per_unit.numel())
    order = per_unit.argsort(descending=True).tolist()
    return sorted(order[:n_exact]), sorted(order[n_exact:])


def _cols(units: list[int], unit: int) -> torch.Tensor:
    return torch.cat([torch.arange(u * unit, (u + 1) * unit) for u in units] + [torch.arange(0)])


def _unit_bytes(data: torch.Tensor, units: list[int], unit_bytes: int) -> torch.Tensor:
    """The bytes of the head's units ``units``, side by side: uint8 [V, len(units) * unit_bytes]."""
    parts = [data[:, u * unit_bytes : (u + 1) * unit_bytes] for u in units]
    return torch.cat(parts, 1).contiguous() if parts else data.new_empty(data.shape[0], 0)


def build_pruned_head(weight, energy: torch.Tensor, cap: float | None) -> PrunedHead:
    """The pruned head of ``weight`` (a GGUF block weight of `HEAD_TYPES`) for hidden states whose
    per-32-block energy is ``energy``."""
    unit, unit_bytes = GGML_QUANT_SIZES[weight.qtype]
    a_units, b_units = _units(energy, unit)
    a_cols, b_cols = _cols(a_units, unit), _cols(b_units, unit)
    data = weight.data
    a_data = _unit_bytes(data, a_units, unit_bytes)
    # the bound's groups: re-quantized 32-blocks by energy, split into GROUPS nearly equal energies
    b_blocks = b_cols.view(-1, 32)[:, 0] // 32
    ranked = b_blocks[energy[b_blocks].argsort(descending=True)]
    n_groups = min(GROUPS, ranked.numel())
    groups = torch.zeros(energy.numel(), n_groups, dtype=torch.float64)
    for g, part in enumerate(torch.tensor_split(ranked, _group_cuts(energy[ranked], n_groups))):
        groups[part, g] = 1.0
    group_of = groups[b_blocks].argmax(1)  # [nbB]
    vocab = data.shape[0]
    b_data = torch.empty(vocab, b_cols.numel() // 32 * 18, dtype=torch.uint8)
    err = torch.empty(n_groups, vocab, dtype=torch.float32)
    maxima = {"row_norm": 0.0, "a_norm": 0.0, "b_norm": 0.0, "b_abs": 0.0}
    for lo in range(0, vocab, CHUNK):
        hi = min(vocab, lo + CHUNK)
        rows = weight.rows(torch.arange(lo, hi))  # [c, D] float32: the values the kernel multiplies
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("the output head holds non-finite weights")
        exact_b = rows[:, b_cols]
        b_bytes, approx_b = encode_q4_0(exact_b)
        b_data[lo:hi] = b_bytes
        diff = exact_b.double() - approx_b.double()  # exact: both are small multiples of a scale
        # a head type whose dequantized float32 value may be rounded (d * s * c): one ulp per weight
        slack = exact_b.double().abs() * (2.0**-23 if weight.qtype != GGMLQuantizationType.Q8_0 else 0.0)
        block_sq = (diff.abs() + slack).view(hi - lo, -1, 32).square().sum(-1)  # [c, nbB]
        group_sq = torch.zeros(hi - lo, n_groups, dtype=torch.float64).index_add_(1, group_of, block_sq)
        err[:, lo:hi] = _round_up(group_sq.sqrt().T * (1 + 1e-12))
        lift = 1 + 2.0**-22  # norms computed in float64 of float32 values, rounded up
        maxima["row_norm"] = max(maxima["row_norm"], float(rows.double().norm(dim=1).max()) * lift)
        maxima["a_norm"] = max(maxima["a_norm"], float(rows[:, a_cols].double().norm(dim=1).max()) * lift)
        maxima["b_norm"] = max(maxima["b_norm"], float(approx_b.double().norm(dim=1).max()) * lift)
        scales = b_bytes.view(hi - lo, -1, 18)[..., :2].contiguous().view(torch.float16).float()
        # Q4_0 in the kernel: unsigned codes (<= 15) times d plus a zero of -8 d per block
        maxima["b_abs"] = max(maxima["b_abs"], 23 * float(scales.abs().max()) * lift)
    return PrunedHead(
        data=data,
        qtype=int(weight.qtype),
        a_cols=a_cols,
        a_data=a_data,
        a_qtype=int(weight.qtype),
        b_cols=b_cols,
        b_data=b_data,
        b_qtype=int(Q4_0),
        groups=groups,
        err=err,
        consts=maxima,
        cap=cap,
    )


def _group_cuts(energies: torch.Tensor, n: int) -> list[int]:
    """Cut points splitting descending ``energies`` into n runs of nearly equal total (each >= 1)."""
    cum = energies.cumsum(0) / energies.sum().clamp(min=1e-300)
    cuts, start = [], 0
    for g in range(1, n):
        at = int(torch.searchsorted(cum, torch.tensor(g / n, dtype=cum.dtype)))
        at = min(max(at + 1, start + 1), energies.numel() - (n - g))
        cuts.append(at)
        start = at
    return cuts


def _round_up(x: torch.Tensor) -> torch.Tensor:
    f = x.float()
    return torch.where(f.double() < x, torch.nextafter(f, torch.tensor(float("inf"))), f)


# -- the cache ------------------------------------------------------------------------------------
def _cache_path(weight) -> Path:
    digest = hashlib.sha256(memoryview(weight.data.numpy()).cast("B")).hexdigest()[:32]
    params = f"v{VERSION}-x{EXACT_SHARE}-g{GROUPS}-c{CALIBRATION[0]}x{CALIBRATION[1]}"
    return cache_dir() / "heads" / f"{digest}-{weight.qtype.name}-{params}.pt"


def _save(head: PrunedHead, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    state = {
        "a_cols": head.a_cols,
        "b_cols": head.b_cols,
        "b_data": head.b_data,
        "groups": head.groups,
        "err": head.err,
        "consts": torch.tensor([head.consts[k] for k in sorted(head.consts)], dtype=torch.float64),
    }
    torch.save(state, tmp)
    tmp.replace(path)


def _load(path: Path, weight, cap: float | None) -> PrunedHead | None:
    try:
        state = torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    keys = ("a_cols", "b_cols", "b_data", "groups", "err", "consts")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        return None
    vocab, width = weight.out_features, weight.in_features
    a_cols, b_cols = state["a_cols"], state["b_cols"]
    if (
        a_cols.numel() + b_cols.numel() != width
        or state["b_data"].shape != (vocab, b_cols.numel() // 32 * 18)
        or state["err"].shape != (state["groups"].shape[1], vocab)
    ):
        return None
    unit, unit_bytes = GGML_QUANT_SIZES[weight.qtype]
    units = (a_cols.view(-1, unit)[:, 0] // unit).tolist()
    data = weight.data
    a_data = _unit_bytes(data, units, unit_bytes)
    names = sorted(("row_norm", "a_norm", "b_norm", "b_abs"))
    return PrunedHead(
        data=data,
        qtype=int(weight.qtype),
        a_cols=a_cols,
        a_data=a_data,
        a_qtype=int(weight.qtype),
        b_cols=b_cols,
        b_data=state["b_data"],
        b_qtype=int(Q4_0),
        groups=state["groups"],
        err=state["err"],
        consts=dict(zip(names, state["consts"].tolist(), strict=True)),
        cap=cap,
    )


def install_output_head(model: torch.nn.Module, mode: str = "auto") -> str | None:
    """Give ``model`` (a `GemmaModel`) its pruned head per ``mode`` (`HEAD_MODES`); the load
    notice to show (None: nothing to say, the full head as always)."""
    if mode not in HEAD_MODES:
        raise ValueError(f"head mode {mode!r}: choose one of {', '.join(HEAD_MODES)}")
    model.output_head = None
    if mode == "full":
        return None
    weight, why = head_weight(model)
    if weight is None:
        return f"output head: full ({why})" if mode == "pruned" else None
    cap = model.config.final_logit_softcapping
    t0 = time.perf_counter()
    path = _cache_path(weight)
    head = _load(path, weight, cap) if path.is_file() else None
    built = head is None
    if built:
        head = build_pruned_head(weight, block_energy(model), cap)
        _save(head, path)
    model.output_head = head
    share = head.b_cols.numel() / head.width
    how = f"built in {time.perf_counter() - t0:.1f} s, cached" if built else "cached"
    return (
        f"output head: pruned for greedy and top-k decoding (exact: a Q4_0 copy of {share:.0%} of "
        f"its inputs bounds every row, the full head computes the rows that can win; "
        f"+{head.extra_bytes / 2**20:.0f} MiB; {how} in {path.parent}); --head full turns it off"
    )
