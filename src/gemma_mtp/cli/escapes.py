"""``-e/--escape``: escape sequences in a prompt, with llama.cpp's rules (`string_process_escapes`
in common/common.cpp): ``\\n \\r \\t \\' \\" \\\\`` and ``\\xNN`` (two hex digits) become the character;
any other backslash pair, and a trailing backslash, stay as they are."""

from __future__ import annotations

import re

__all__ = ["process_escapes"]

_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)


def _one(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _SIMPLE:
        return _SIMPLE[code]
    if len(code) == 3:  # xNN
        return chr(int(code[1:], 16))
    return match.group(0)


def process_escapes(text: str) -> str:
    """``"a\\\\nb"`` -> ``"a\\nb"``, as llama.cpp reads ``-p`` (it does so by default)."""
    return _ESCAPE.sub(_one, text)
