"""The tables people post about MTP, from benchmark rows (the seeds' shape), as markdown:

- acceptance by target quant x draft length, mean ± 1σ over reps, one table per drafter
  (strategy, temperature): the seeds' "acceptance across target quantization levels";
- decode tokens/s by drafter x draft length with plain decoding beside, mean ± 1σ over reps, one
  table per target (temperature): the seeds' "tokens/s by draft depth and drafter quant".

Cells are taken from the rows as they are (the σ is the rows' sample σ over reps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .labels import n_label, overall, quant_of, target_label, varying

__all__ = ["pm", "acceptance_by_quant", "throughput_by_drafter", "seeds_tables"]


def pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    """`0.62 ± 0.05`; `-` when there is no value."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std or 0.0:.{digits}f}"


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _grid(
    rows: Sequence[dict[str, Any]],
    line_of: Callable[[dict[str, Any]], str],
    column_of: Callable[[dict[str, Any]], str],
    cell_of: Callable[[dict[str, Any]], str],
    corner: str,
) -> str:
    lines = list(dict.fromkeys(line_of(r) for r in rows))
    columns = list(dict.fromkeys(column_of(r) for r in rows))
    cells = {(line_of(r), column_of(r)): cell_of(r) for r in rows}
    return _table([corner, *columns], [[ln, *(cells.get((ln, c), "-") for c in columns)] for ln in lines])


def _sections(
    rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str]
) -> list[tuple[str, list[dict[str, Any]]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return list(out.items())


def _sort_n(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain first, then fixed n_max ascending (then p_min), autotune and server settings last."""
    return sorted(
        rows, key=lambda r: (not isinstance(r["n_max"], int), str(r["n_max"]).zfill(4), r.get("p_min") or 0)
    )


def acceptance_by_quant(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """[(title, table)]: acceptance (mean ± σ), a line per target, a column per draft length."""
    every = overall(rows)
    drafting = _sort_n([r for r in every if r["n_max"] != 0 and r.get("acceptance") is not None])
    several_temps, several_p = varying(drafting, "temperature"), varying(drafting, "p_min")

    def section(r: dict[str, Any]) -> str:
        title = f"{r['drafter']}" + (
            f" ({r['strategy']})" if r.get("strategy") not in (None, r["drafter"]) else ""
        )
        return title + (f", temperature {r['temperature']}" if several_temps else "")

    return [
        (
            title,
            _grid(
                mine,
                lambda r: target_label(r, every),
                lambda r: n_label(r, several_p),
                lambda r: pm(r.get("acceptance"), r.get("acceptance_std")),
                "target",
            ),
        )
        for title, mine in _sections(drafting, section)
    ]


def throughput_by_drafter(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """[(title, table)]: decode tokens/s (mean ± σ), a line per drafter (its quant), a column per
    draft length, plain decoding in its own column."""
    every = _sort_n(overall(rows))
    several_temps = varying(every, "temperature")
    several_p = varying([r for r in every if r["n_max"] != 0], "p_min")

    def section(r: dict[str, Any]) -> str:
        return target_label(r, every) + (f", temperature {r['temperature']}" if several_temps else "")

    def line(r: dict[str, Any]) -> str:
        if r["n_max"] == 0:
            return "plain decoding"
        quant = quant_of(r.get("drafter_weights"))
        return f"{r['drafter']} ({quant})" if quant and quant not in str(r["drafter"]) else str(r["drafter"])

    return [
        (
            title,
            _grid(
                mine,
                line,
                lambda r: n_label(r, several_p),
                lambda r: pm(r.get("tokens_per_s"), r.get("tokens_per_s_std"), 1),
                "drafter",
            ),
        )
        for title, mine in _sections(every, section)
    ]


def seeds_tables(rows: Sequence[dict[str, Any]]) -> list[str]:
    """report.md's lines for both kinds of table."""
    lines: list[str] = []
    for heading, tables in (
        ("Acceptance by target quant and draft length (mean ± 1σ over reps)", acceptance_by_quant(rows)),
        ("Decode tokens/s by drafter and draft length (mean ± 1σ over reps)", throughput_by_drafter(rows)),
    ):
        if not tables:
            continue
        lines += [f"## {heading}", ""]
        for title, table in tables:
            lines += [f"### {title}", "", table, ""]
    return lines
