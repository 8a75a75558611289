"""Helpers shared by the benchmark scripts: provenance (git commit, time), JSONL rows, a plain table."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

__all__ = [
    "REPO",
    "RESULTS",
    "git_commit",
    "git_dirty",
    "timestamp",
    "cpu_name",
    "append_jsonl",
    "median",
    "format_table",
]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    """The checked-out commit (short hash), or "unknown" outside a git checkout."""
    return _git("rev-parse", "--short=12", "HEAD") or "unknown"


def git_dirty() -> bool:
    """True when tracked files differ from the commit (the numbers then describe a work tree)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no"))


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Append one JSON object per row to `path` (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def status_mb(key: str = "VmHWM") -> float | None:
    """A memory figure of this process from /proc/self/status in MB (`VmHWM`: peak RSS, `VmRSS`:
    now); None off Linux. Read in the measured process itself: `ru_maxrss` survives execve, so a
    spawned child would report its parent's peak whenever that is higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain left-aligned text table of `columns` (missing cells print as "-")."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
