"""Human output from benchmark rows: markdown tables (plain text or a rich table for the terminal),
rows.jsonl, and report.md embedding the plots. Everything is computed from the rows alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .labels import quant_of
from .plots import write_plots
from .tables import pm as _pm
from .tables import seeds_tables

__all__ = ["COLUMNS", "table_cells", "markdown_table", "rich_table", "write_jsonl", "write_report"]

COLUMNS = (
    "drafter",
    "n_max",
    "tok/s",
    "speedup",
    "acceptance",
    "by position",
    "accepted length",
    "strategy",
    "target",
    "temp",
    "lossless",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    positions = " / ".join("-" if a is None else f"{a:.2f}" for a in row.get("acceptance_by_position", []))
    n_max = "plain" if row["n_max"] == 0 else str(row["n_max"])
    if row["n_max"] != 0 and row.get("p_min"):
        n_max += f" p={row['p_min']:g}"
    chosen = row.get("autotune_chosen")
    if chosen:  # the n it spent most rounds on, and how often
        top = max(range(len(chosen)), key=chosen.__getitem__)
        n_max += f" (mostly {top}: {chosen[top] / sum(chosen):.0%})"
    return [
        "-" if row["n_max"] == 0 else str(row["drafter"]),
        n_max,
        _pm(row.get("tokens_per_s"), row.get("tokens_per_s_std"), 1),
        _pm(row.get("speedup"), row.get("speedup_std")),
        _pm(row.get("acceptance"), row.get("acceptance_std")),
        positions or "-",
        _pm(row.get("mean_accepted_length"), row.get("mean_accepted_length_std")),
        str(row.get("strategy") or row.get("spec_type") or "-"),
        str(row.get("target") or row.get("model") or "-"),
        "-" if row.get("temperature") is None else f"{row['temperature']:g}",
        _lossless_cell(row),
    ]


def _lossless_cell(row: dict[str, Any]) -> str:
    """greedy: `yes`/`NO` (outputs equal plain decoding's); sampled: the distribution test's p-value."""
    cells = []
    if row.get("lossless") is not None:
        cells.append("yes" if row["lossless"] else "NO")
    check = row.get("lossless_sampling")
    if check:
        cells.append(
            f"{'ok' if check['passed'] else 'FAILED'} (p={check['pvalue']:.2g}, {check['draws']} draws)"
        )
    return ", ".join(cells) or "-"


def _overall(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("category", "all") == "all"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in _overall(rows)]
    return "\n".join(lines)


def category_table(rows: Sequence[dict[str, Any]]) -> str:
    """Speedup and acceptance per prompt category, one line per (drafter, n_max)."""
    categories = list(dict.fromkeys(r["category"] for r in rows if r["category"] != "all"))
    if not categories:
        return ""
    head = ["drafter", "n_max", *categories]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _overall(rows):
        if r["n_max"] == 0:
            continue
        cells = [str(r["drafter"]), str(r["n_max"])]
        for c in categories:
            match = next(
                (
                    x
                    for x in rows
                    if x["category"] == c and (x["drafter"], x["n_max"]) == (r["drafter"], r["n_max"])
                ),
                None,
            )
            if match is None or match.get("speedup") is None:
                cells.append("-")
            else:
                acc = match.get("acceptance")
                cells.append(f"{match['speedup']:.2f}x" + (f", acc {acc:.2f}" if acc is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rich_table(rows: Sequence[dict[str, Any]], title: str | None = None):
    """A `rich.table.Table` in markdown style (print it with a rich Console)."""
    from rich import box
    from rich.table import Table

    table = Table(*COLUMNS, title=title, box=box.MARKDOWN)
    for r in _overall(rows):
        table.add_row(*table_cells(r))
    return table


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """rows.jsonl, the PNG plots and report.md (which embeds them) under `out_dir`."""
    out_dir = Path(out_dir)
    jsonl = write_jsonl(rows, out_dir / "rows.jsonl")
    plots = write_plots(rows, out_dir)
    first = rows[0] if rows else {}
    targets = {r.get("model"): r.get("model_weights") for r in rows}
    lines = [
        "# Speculative decoding benchmark",
        "",
        *(f"- target: `{model}` ({_weights(weights)})" for model, weights in targets.items()),
        f"- compute dtype {first.get('dtype', '?')}; device: {first.get('device', '?')}; "
        f"torch {first.get('torch', '?')}; commit {first.get('git_commit', '?')}; {first.get('timestamp', '?')}",
        f"- {first.get('n_predict', '?')} tokens per prompt, temperature "
        f"{', '.join(map(str, dict.fromkeys(r.get('temperature') for r in rows)))}, "
        f"{first.get('reps', '?')} reps with distinct seeds (mean ± 1σ over reps)",
        "",
        *seeds_tables(rows),
        "## All rows",
        "",
        markdown_table(rows),
        "",
        "Acceptance by position i: rounds whose i-th draft was kept / rounds that drafted an i-th token. "
        "Accepted length: tokens committed per verify pass that carried drafts (1 + accepted / rounds). "
        "Speedup: decode tokens/s over plain decoding of the same target in the same rep.",
        "",
    ]
    by_category = category_table(rows)
    if by_category:
        lines += ["## By prompt category (speedup, acceptance)", "", by_category, ""]
    for plot in (p for p in plots if p.suffix == ".png"):
        lines += [
            f"![{plot.stem}]({plot.name})",
            f"(plotted values: [{plot.stem}.json]({plot.stem}.json))",
            "",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return [jsonl, *plots, report]


def _weights(desc: dict[str, Any] | None) -> str:
    if not desc:
        return "?"
    if desc.get("format") == "gguf":
        types = ", ".join(f"{k} {v:.0%}" for k, v in list(desc.get("tensor_types", {}).items())[:3])
        return "GGUF " + ": ".join(x for x in (quant_of(desc), types) if x)
    return f"HF {desc.get('dtype') or '?'}"
