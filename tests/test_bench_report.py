"""report.md's tables in the seeds' shape (target quant x n_max, drafter x n_max; mean ± 1σ over
reps) and the plots, whose drawn values are read back from the figures and checked against
rows.jsonl. Rows are made by hand from `summarize` on known generations."""

from __future__ import annotations

import json

import pytest

from gemma_mtp.bench.stats import Generation, summarize
from gemma_mtp.bench.tables import acceptance_by_quant, throughput_by_drafter

pytest.importorskip("matplotlib")

Q4_K_M, Q8_0 = 15, 7  # llama.cpp's general.file_type values


def _gens(accepted: list[int], decoded: list[int]) -> list[Generation]:
    """One generation per rep: 2 drafts in each of 5 rounds, `accepted[rep]` kept (first positions
    first), `decoded[rep]` tokens in 1 s."""
    return [
        Generation(
            category="code",
            rep=rep,
            n_decoded=n,
            decode_ms=1000.0,
            drafted=10,
            accepted=a,
            rounds=5,
            accepted_by_position=(min(a, 5), max(a - 5, 0)),
            drafted_by_position=(5, 5),
        )
        for rep, (a, n) in enumerate(zip(accepted, decoded, strict=True))
    ]


def _row(target: str, file_type: int, drafter: str, n_max: int, gens: list[Generation]) -> dict:
    return {
        "mode": "local",
        "category": "all",
        "target": target,
        "model": f"/m/{target}",
        "model_weights": {"format": "gguf", "file_type": file_type},
        "drafter": "none" if n_max == 0 else drafter,
        "drafter_weights": None if n_max == 0 else {"format": "gguf", "file_type": Q8_0},
        "strategy": "none" if n_max == 0 else "mtp",
        "n_max": n_max,
        "p_min": None if n_max == 0 else 0.0,
        "temperature": 0.3,
        **summarize(gens),
    }


ROWS = [
    _row("t-q4.gguf", Q4_K_M, "d.gguf", 0, _gens([0, 0, 0], [8, 8, 8])),
    # acceptance per rep 0.5 / 0.6 / 0.7: mean 0.6, sample σ 0.1; tokens/s 10 / 20 / 30: 20 ± 10
    _row("t-q4.gguf", Q4_K_M, "d.gguf", 2, _gens([5, 6, 7], [10, 20, 30])),
    _row("t-q4.gguf", Q4_K_M, "d.gguf", 3, _gens([4, 4, 4], [12, 12, 12])),
    _row("t-q8.gguf", Q8_0, "d.gguf", 0, _gens([0, 0, 0], [6, 6, 6])),
    _row("t-q8.gguf", Q8_0, "d.gguf", 2, _gens([8, 9, 10], [9, 9, 12])),
]


def test_sigma_over_reps_on_a_hand_made_case():
    row = ROWS[1]
    assert row["acceptance"] == pytest.approx(0.6) and row["acceptance_std"] == pytest.approx(0.1)
    assert row["tokens_per_s"] == pytest.approx(20.0) and row["tokens_per_s_std"] == pytest.approx(10.0)
    # Q8_0 target at n=2: 0.8 / 0.9 / 1.0 -> 0.9 ± 0.1; 9 / 9 / 12 tok/s -> 10 ± sqrt(3)
    assert ROWS[4]["acceptance_std"] == pytest.approx(0.1)
    assert ROWS[4]["tokens_per_s_std"] == pytest.approx(3**0.5)


def test_acceptance_table_is_target_quant_by_n_max():
    [(title, table)] = acceptance_by_quant(ROWS)
    assert title == "d.gguf (mtp)"
    lines = table.splitlines()
    assert lines[0] == "| target | n=2 | n=3 |"
    assert lines[2] == "| Q4_K_M | 0.60 ± 0.10 | 0.40 ± 0.00 |"
    assert lines[3] == "| Q8_0 | 0.90 ± 0.10 | - |"


def test_throughput_table_is_drafter_by_n_max_per_target_with_plain_beside():
    tables = dict(throughput_by_drafter(ROWS))
    assert list(tables) == ["Q4_K_M", "Q8_0"]
    lines = tables["Q4_K_M"].splitlines()
    assert lines[0] == "| drafter | plain | n=2 | n=3 |"
    assert lines[2] == "| plain decoding | 8.0 ± 0.0 | - | - |"
    assert lines[3] == "| d.gguf (Q8_0) | - | 20.0 ± 10.0 | 12.0 ± 0.0 |"
    assert tables["Q8_0"].splitlines()[3] == "| d.gguf (Q8_0) | - | 10.0 ± 1.7 |"  # its own columns


def _drawn(figure) -> dict[tuple[str, str], tuple[list, list, list]]:
    """{(panel title, legend label): (x, y, yerr)} from the figure's own errorbar artists."""
    out = {}
    for ax in figure.axes:
        for container in ax.containers:
            line = container.lines[0]
            bars = container.lines[2][0].get_segments() if container.lines[2] else []
            yerr = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars]
            out[(ax.get_title(), container.get_label())] = (
                list(line.get_xdata()),
                list(line.get_ydata()),
                yerr,
            )
    return out


def test_plotted_values_are_the_rows_values(tmp_path):
    from gemma_mtp.bench.plots import plot_acceptance, plot_throughput
    from gemma_mtp.bench.report import write_report

    write_report(ROWS, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    acceptance = _drawn(plot_acceptance(rows, tmp_path / "a.png").figure)
    for r in (r for r in rows if r["n_max"] != 0):
        x, y, yerr = acceptance[
            ("d.gguf (mtp)", f"{'Q4_K_M' if 'q4' in r['target'] else 'Q8_0'} n={r['n_max']}")
        ]
        assert x == list(range(1, len(r["acceptance_by_position"]) + 1))
        assert y == pytest.approx(r["acceptance_by_position"])
        assert yerr == pytest.approx(r["acceptance_by_position_std"])
    throughput = _drawn(plot_throughput(rows, tmp_path / "t.png").figure)
    assert set(throughput) == {("Q4_K_M", "d.gguf"), ("Q8_0", "d.gguf")}
    for target, panel in (("t-q4.gguf", "Q4_K_M"), ("t-q8.gguf", "Q8_0")):
        mine = sorted((r for r in rows if r["target"] == target), key=lambda r: r["n_max"])
        x, y, yerr = throughput[(panel, "d.gguf")]
        assert x == [r["n_max"] for r in mine]  # plain at 0, then each n_max
        assert y == pytest.approx([r["tokens_per_s"] for r in mine])
        assert yerr == pytest.approx([r["tokens_per_s_std"] for r in mine])
    # the series written beside each PNG are the ones drawn
    written = json.loads((tmp_path / "tokens_per_s.json").read_text())
    assert {(s["panel"], s["label"]): (s["x"], s["y"]) for s in written} == {
        k: (v[0], pytest.approx(v[1])) for k, v in throughput.items()
    }


def test_report_has_the_seeds_tables_and_the_plots(tmp_path):
    from gemma_mtp.bench.report import write_report

    names = sorted(p.name for p in write_report(ROWS, tmp_path))
    assert names == [
        "acceptance_by_position.json",
        "acceptance_by_position.png",
        "report.md",
        "rows.jsonl",
        "tokens_per_s.json",
        "tokens_per_s.png",
    ]
    report = (tmp_path / "report.md").read_text()
    assert "## Acceptance by target quant and draft length (mean ± 1σ over reps)" in report
    assert "| Q4_K_M | 0.60 ± 0.10 | 0.40 ± 0.00 |" in report
    assert "| d.gguf (Q8_0) | - | 20.0 ± 10.0 | 12.0 ± 0.0 |" in report
    assert "![tokens_per_s](tokens_per_s.png)" in report
