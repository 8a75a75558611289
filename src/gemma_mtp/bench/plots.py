"""PNG plots from benchmark rows (matplotlib's object API on the Agg canvas: no display needed).

Each plot function returns a `Plot`: the figure, the file written and the series it drew, which
`write_plots` also writes beside the PNG as JSON, so that what a picture shows can be checked
against rows.jsonl (tests read the series back from the figure's own lines too).

- acceptance_by_position: a panel per drafter (strategy, temperature), a line per target quant
  and draft length (±1σ over reps) - the seeds' "acceptance by depth across target quants".
- tokens_per_s: a panel per target (temperature), a line per drafter over n_max, plain decoding
  drawn at n = 0 and as a dashed line - the seeds' "tokens/s by depth and drafter quant".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .labels import n_label, overall, target_label, varying

__all__ = ["Plot", "Series", "plot_acceptance", "plot_throughput", "write_plots"]


@dataclass(frozen=True)
class Series:
    panel: str
    label: str
    x: list[float]
    y: list[float]
    yerr: list[float]


@dataclass
class Plot:
    path: Path
    figure: Any  # matplotlib.figure.Figure
    series: list[Series] = field(default_factory=list)


def _figure(n_panels: int):
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the install
        from ..errors import UsageError

        raise UsageError("plots need matplotlib: pip install 'gemma-mtp[bench]'") from None
    fig = Figure(figsize=(4.2 * n_panels + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _drafting(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in overall(rows) if r["n_max"] != 0]


def _panel_key(row: dict[str, Any], rows: Sequence[dict[str, Any]], *, by: str) -> str:
    """The panel title: the drafter (or target), with strategy and temperature when they vary."""
    if by == "drafter":
        title = str(row["drafter"])
        if row.get("strategy") and row["strategy"] != row["drafter"]:
            title += f" ({row['strategy']})"
    else:
        title = target_label(row, rows)
    if varying(rows, "temperature"):
        title += f", T={row.get('temperature')}"
    return title


def _draw(ax, series: Series, **style) -> None:
    ax.errorbar(series.x, series.y, yerr=series.yerr, marker="o", capsize=3, label=series.label, **style)


def plot_acceptance(rows: Sequence[dict[str, Any]], path: str | Path) -> Plot | None:
    """Acceptance rate by draft position; a panel per drafter, a line per target quant and n_max."""
    rows = [r for r in _drafting(rows) if r.get("acceptance_by_position")]
    panels = list(dict.fromkeys(_panel_key(r, rows, by="drafter") for r in rows))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    several_targets, several_p = varying(rows, "target"), varying(rows, "p_min")
    plot = Plot(Path(path), fig)
    for ax, panel in zip(axes, panels, strict=True):
        for r in (r for r in rows if _panel_key(r, rows, by="drafter") == panel):
            means = r["acceptance_by_position"]
            stds = [s or 0.0 for s in r.get("acceptance_by_position_std") or [0.0] * len(means)]
            label = n_label(r, several_p)
            if several_targets:
                label = f"{target_label(r, rows)} {label}"
            kept = [(i + 1, m, s) for i, (m, s) in enumerate(zip(means, stds, strict=True)) if m is not None]
            series = Series(panel, label, [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept])
            _draw(ax, series)
            plot.series.append(series)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("draft position")
        ax.set_ylabel("acceptance rate")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(plot)


def plot_throughput(rows: Sequence[dict[str, Any]], path: str | Path) -> Plot | None:
    """Decode tokens/s against n_max (0 = plain decoding); a panel per target, a line per drafter."""
    rows = overall(rows)
    drafting = _drafting(rows)
    if not drafting:
        return None
    panels = list(dict.fromkeys(_panel_key(r, rows, by="target") for r in rows))
    fig, axes = _figure(len(panels))
    several_p = varying(drafting, "p_min")
    plot = Plot(Path(path), fig)
    for ax, panel in zip(axes, panels, strict=True):
        mine = [r for r in rows if _panel_key(r, rows, by="target") == panel]
        plain = next((r for r in mine if r["n_max"] == 0), None)
        lines: dict[str, list[dict[str, Any]]] = {}
        for r in mine:
            if isinstance(r["n_max"], int) and r["n_max"] > 0:
                label = str(r["drafter"]) + (
                    f" p={r['p_min']:g}" if several_p and r.get("p_min") is not None else ""
                )
                lines.setdefault(label, []).append(r)
        for label, points in lines.items():
            points = sorted(points, key=lambda r: r["n_max"])
            if plain is not None:
                points = [plain, *points]
            series = Series(
                panel,
                label,
                [r["n_max"] for r in points],
                [r["tokens_per_s"] for r in points],
                [r.get("tokens_per_s_std") or 0.0 for r in points],
            )
            _draw(ax, series)
            plot.series.append(series)
        if plain is not None:
            ax.axhline(plain["tokens_per_s"], color="gray", linestyle="--", linewidth=1, label="plain")
        for r in (r for r in mine if r["n_max"] == "auto"):
            ax.axhline(r["tokens_per_s"], linestyle=":", label=f"{r['drafter']} autotune")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("n_max (0 = plain decoding)")
        ax.set_ylabel("decode tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(plot)


def write_plots(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """The PNGs, each with its plotted series as `<name>.json` beside it; returns both."""
    out_dir = Path(out_dir)
    made = [
        plot_acceptance(rows, out_dir / "acceptance_by_position.png"),
        plot_throughput(rows, out_dir / "tokens_per_s.png"),
    ]
    paths = []
    for plot in made:
        if plot is None:
            continue
        data = [asdict(s) for s in plot.series]
        series = plot.path.with_suffix(".json")
        series.write_text(json.dumps(data, indent=1) + "\n")
        paths += [plot.path, series]
    return paths


def _save(plot: Plot) -> Plot:
    plot.path.parent.mkdir(parents=True, exist_ok=True)
    plot.figure.savefig(plot.path, dpi=110)
    return plot
