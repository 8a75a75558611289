"""Benchmark prompts: a built-in set of our own, grouped by category, or a JSONL file.

A file holds one object per line: `{"category": "code", "prompt": "def f(x):"}`; `prompt` may also
be a list of token ids (no tokenizer needed). A prompt may carry media for a Gemma 4 model with the
towers: `"images": ["photo.png"]`, `"audio": ["clip.wav"]` (paths relative to the JSONL file), which
fill the prompt's `<|image|>` / `<|audio|>` placeholders in order (with `--chat`, the user message
carries them before its text; a prompt without placeholders gets them after `<bos>`). Acceptance
depends on the kind of text far more than on anything else, so every number the harness reports is
also broken down by category.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = [
    "CATEGORIES",
    "BUILTIN",
    "SEEDS",
    "PRESETS",
    "MEDIA_FIELDS",
    "MEDIA_ROOM",
    "BenchPrompt",
    "load_prompts",
    "media_room",
    "user_content",
    "with_placeholders",
]

CATEGORIES = ("code", "json", "prose", "reasoning", "multilingual")


MEDIA_FIELDS = ("images", "audio")


@dataclass(frozen=True)
class BenchPrompt:
    category: str
    prompt: str | tuple[int, ...]  # text, or token ids
    images: tuple[str, ...] = ()  # image files, for the prompt's image placeholders in order
    audio: tuple[str, ...] = ()  # WAV files, likewise

    @property
    def is_text(self) -> bool:
        return isinstance(self.prompt, str)

    @property
    def has_media(self) -> bool:
        return bool(self.images or self.audio)

    def media(self) -> dict[str, list[str]]:
        """`Engine.generate`'s keyword arguments for the media (none: {})."""
        return {k: list(v) for k, v in (("images", self.images), ("audio", self.audio)) if v}


_BUILTIN_TEXT: dict[str, tuple[str, ...]] = {
    "code": (
        "def fibonacci(n):\n"
        '    """Return the first n Fibonacci numbers as a list."""\n'
        "    if n <= 0:\n"
        "        return []\n",
        "import json\n\n\n"
        "def load_users(path):\n"
        '    """Read the users file and return a list of dicts."""\n'
        "    with open(path) as f:\n"
        "        return json.load(f)\n\n\n"
        "def load_orders(path):\n",
        "class Stack:\n"
        "    def __init__(self):\n"
        "        self.items = []\n\n"
        "    def push(self, item):\n"
        "        self.items.append(item)\n\n"
        "    def pop(self):\n",
        "#include <stdio.h>\n\nint main(void) {\n    for (int i = 0; i < 10; i++) {\n",
    ),
    "json": (
        '[{"id": 1, "name": "Alice", "email": "alice@example.com", "active": true},\n'
        ' {"id": 2, "name": "Bob", "email": "bob@example.com", "active": false},\n'
        ' {"id": 3, "name": "Carol",',
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"city": "Lyon", "population": 522250}, "geometry": {"type": "Point", "coordinates": '
        '[4.835, 45.758]}}, {"type": "Feature", "properties": {"city": "Porto",',
        "name,age,city\nAlice,34,Paris\nBob,28,Berlin\nCarol,41,Madrid\nDavid,",
    ),
    "prose": (
        "The lighthouse keeper climbed the narrow stairs every evening at dusk. On the night the "
        "storm arrived,",
        "Bread is one of the oldest prepared foods. Its history begins",
        "Dear Ms. Patel,\n\nThank you for your letter of 3 March. I am writing to confirm that",
    ),
    "reasoning": (
        "Question: A train travels 120 km in 2 hours, then 90 km in 1.5 hours. What is its average "
        "speed for the whole trip?\nAnswer: Let's think step by step.",
        "Question: Tom has three times as many apples as Sara. Together they have 24 apples. How "
        "many apples does Sara have?\nAnswer: Let's think step by step.",
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies? Reasoning:",
    ),
    "multilingual": (
        "La ville de Lyon est située au confluent du Rhône et de la Saône. Elle est connue pour",
        "Der Rhein ist einer der längsten Flüsse Europas. Er entspringt in den Alpen und",
        "El café se cultiva en muchos países de América Latina. En Colombia,",
        "東京は日本の首都であり、",
    ),
}

BUILTIN: tuple[BenchPrompt, ...] = tuple(
    BenchPrompt(category, text) for category, texts in _BUILTIN_TEXT.items() for text in texts
)


# The protocol the seeds' users posted their MTP tables with: 5 mixed coding/reasoning requests sent
# as chat messages, 200 tokens, temperature 0.3, thinking off, 3 reps with distinct seeds. The
# requests are ours, written in the shape they describe.
SEEDS: tuple[BenchPrompt, ...] = (
    BenchPrompt("code", "Write a Python function that returns the n-th prime number, with a docstring."),
    BenchPrompt("code", "Implement binary search over a sorted list in Python and explain its complexity."),
    BenchPrompt("code", "Write a SQL query that lists the ten customers with the highest total order value."),
    BenchPrompt(
        "reasoning",
        "A train leaves at 9:40 and arrives at 13:05 after two stops of 10 minutes each. How long was "
        "it moving? Explain step by step.",
    ),
    BenchPrompt(
        "reasoning",
        "Three friends split a bill of 84 euros so that Ana pays twice what Ben pays and Ben pays 6 "
        "euros more than Caro. How much does each pay?",
    ),
)
# A preset sets the workload flags it names unless they are given; `chat` renders prompts through
# the model's chat template, `reasoning` is its enable_thinking (llama.cpp's -rea).
PRESETS: dict[str, dict[str, object]] = {
    "seeds": {
        "prompts": "seeds",
        "n_predict": 200,
        "temperature": 0.3,
        "reps": 3,
        "chat": True,
        "reasoning": "off",
    },
}


def load_prompts(source: str) -> list[BenchPrompt]:
    """`builtin`, `seeds`, or a JSONL file of `{"category": ..., "prompt": text or [token ids]}`,
    optionally with `"images": [files]` and `"audio": [WAV files]` (relative to the file)."""
    if source == "builtin":
        return list(BUILTIN)
    if source == "seeds":
        return list(SEEDS)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"--prompts {source}: no such file; give a JSONL file or 'builtin'")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"--prompts {path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or "prompt" not in item:
            raise UsageError(f'{where}: expected an object {{"category": ..., "prompt": ...}}')
        prompt = item["prompt"]
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(t, int) and t >= 0 for t in prompt):
                raise UsageError(f"{where}: a token-id prompt must be a non-empty list of ids >= 0")
            prompt = tuple(prompt)
        elif not isinstance(prompt, str) or not prompt:
            raise UsageError(f"{where}: prompt must be non-empty text or a list of token ids")
        media = {key: _media_files(item.get(key), key, path, where) for key in MEDIA_FIELDS}
        prompts.append(BenchPrompt(str(item.get("category", "uncategorized")), prompt, **media))
    if not prompts:
        raise UsageError(f"--prompts {path}: the file holds no prompts")
    return prompts


def _media_files(value: object, key: str, jsonl: Path, where: str) -> tuple[str, ...]:
    """A prompt's `images` / `audio` list: each a file, relative to the JSONL file's folder."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f'{where}: "{key}" must be a list of file paths, e.g. "{key}": ["file"]')
    files = []
    for name in value:
        file = jsonl.parent / name  # (an absolute name stays as it is)
        if not file.is_file():
            raise UsageError(
                f'{where}: "{key}" file {name} not found (looked for {file}); paths are relative to the prompts file'
            )
        files.append(str(file))
    return tuple(files)


# Context room per image / clip when -c is not given: the largest soft-token budget of Gemma 4's
# processors (max_soft_tokens 1120; 750 for 30 s of audio) plus the begin/end markers.
MEDIA_ROOM = {"images": 1120 + 2, "audio": 750 + 2}


def media_room(prompt: BenchPrompt) -> int:
    return len(prompt.images) * MEDIA_ROOM["images"] + len(prompt.audio) * MEDIA_ROOM["audio"]


def user_content(prompt: BenchPrompt) -> str | list[dict[str, str]]:
    """The chat template's user content for a text prompt: its images, then its clips, then the text."""
    if not prompt.has_media:
        return str(prompt.prompt)
    media = [{"type": "image"} for _ in prompt.images] + [{"type": "audio"} for _ in prompt.audio]
    return [*media, {"type": "text", "text": str(prompt.prompt)}]


def with_placeholders(ids: list[int], prompt: BenchPrompt, tokens, number: int, *, bos: int = 2) -> list[int]:
    """`ids` with one placeholder per image / clip: a prompt without any gets them after `<bos>` (as
    `run` does); one with some must have exactly one per file. `tokens`: a `media.prompt.MediaTokens`."""
    if not prompt.has_media:
        return ids
    for kind, files in (("audio", prompt.audio), ("image", prompt.images)):  # images end up first
        placeholder = tokens.markers(kind)[0]
        if files and placeholder not in ids:
            head = 1 if ids[:1] == [bos] else 0
            ids = [*ids[:head], *([placeholder] * len(files)), *ids[head:]]
        if ids.count(placeholder) != len(files):
            raise UsageError(
                f"--prompts: prompt {number} has {ids.count(placeholder)} {kind} placeholders but "
                f"{len(files)} {kind} files; give one file per placeholder, or no placeholders"
            )
    return ids
