"""Benchmark harness: prompts, the local runner and the endpoint client, harness arithmetic,
reports and plots. `gemma-mtp bench` is `cli.py`; the library never prints."""

from __future__ import annotations

from .prompts import BUILTIN, CATEGORIES, BenchPrompt, load_prompts
from .stats import Generation, Totals, mean_std, summarize, totals

__all__ = [
    "BUILTIN",
    "CATEGORIES",
    "BenchPrompt",
    "Generation",
    "Totals",
    "load_prompts",
    "mean_std",
    "summarize",
    "totals",
]
