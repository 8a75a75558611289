"""PNG plots from benchmark rows (matplotlib's object API on the Agg canvas: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_acceptance", "plot_throughput", "write_plots"]


def _figure(n_panels: int):
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the install
        from ..errors import UsageError

        raise UsageError("plots need matplotlib: pip install 'gemma-mtp[bench]'") from None
    fig = Figure(figsize=(4.2 * n_panels + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _drafters(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["drafter"] for r in rows if r["n_max"] != 0))


def _n_label(n: Any) -> str:
    return "autotune" if n == "auto" else f"n_max={n}"


def plot_acceptance(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Acceptance rate by draft position, one panel per drafter, one line per n_max (±1σ)."""
    rows = [r for r in rows if r["category"] == "all" and r["n_max"] != 0 and r["acceptance_by_position"]]
    drafters = _drafters(rows)
    if not drafters:
        return None
    fig, axes = _figure(len(drafters))
    for ax, drafter in zip(axes, drafters, strict=True):
        for r in (r for r in rows if r["drafter"] == drafter):
            means = r["acceptance_by_position"]
            stds = [s or 0.0 for s in r["acceptance_by_position_std"]]
            xs = [i + 1 for i, m in enumerate(means) if m is not None]
            ys = [m for m in means if m is not None]
            es = [s for m, s in zip(means, stds, strict=True) if m is not None]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=_n_label(r["n_max"]))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(drafter, fontsize=9)
        ax.set_xlabel("draft position")
        ax.set_ylabel("acceptance rate")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_throughput(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Decode tokens/s against n_max (0 = plain decoding), one panel per drafter, ±1σ."""
    rows = [r for r in rows if r["category"] == "all"]
    drafters = _drafters(rows)
    plain = next((r for r in rows if r["n_max"] == 0), None)
    if not drafters:
        return None
    fig, axes = _figure(len(drafters))
    for ax, drafter in zip(axes, drafters, strict=True):
        fixed = sorted(
            (r for r in rows if r["drafter"] == drafter and isinstance(r["n_max"], int)),
            key=lambda r: r["n_max"],
        )
        points = [plain, *fixed] if plain is not None else fixed
        if not points:
            continue
        ax.errorbar(
            [r["n_max"] for r in points],
            [r["tokens_per_s"] for r in points],
            yerr=[r["tokens_per_s_std"] or 0.0 for r in points],
            marker="o",
            capsize=3,
            label="fixed n_max (0 = plain)",
        )
        if plain is not None:
            ax.axhline(plain["tokens_per_s"], color="gray", linestyle="--", linewidth=1, label="plain")
        auto = next((r for r in rows if r["drafter"] == drafter and r["n_max"] == "auto"), None)
        if auto is not None:
            ax.axhline(auto["tokens_per_s"], color="tab:green", linestyle=":", label="autotune")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(drafter, fontsize=9)
        ax.set_xlabel("n_max")
        ax.set_ylabel("decode tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = [
        plot_acceptance(rows, out_dir / "acceptance_by_position.png"),
        plot_throughput(rows, out_dir / "tokens_per_s.png"),
    ]
    return [p for p in made if p is not None]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
