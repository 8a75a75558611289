"""A tiny Gemma 4 checkpoint that a server can run: weights, tokenizer.json and a chat template.

The weights are the reference suite's tiny random e2b-like target (``hf_reference``); next to them
we write a 256-token Gemma 4-style vocabulary (special tokens at Gemma 4's ids, ASCII characters,
a few merges) and a small Gemma 4-style chat template that renders a system turn, tool
declarations, tool calls and tool results. Outputs are random text: tests compare the server
with our own library calls, never with fixed strings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gemma_mtp.tokenizer import Tokenizer, tokenizer_from_gguf_metadata

# Gemma 4's special tokens at their real ids: text, GGUF token type (3 control: left out of decoded
# text; 4 user-defined: kept, so the chat output parser sees them; 2 unknown).
SPECIAL_TOKENS = {
    0: ("<pad>", 3),
    1: ("<eos>", 3),
    2: ("<bos>", 3),
    3: ("<unk>", 2),
    4: ("<mask>", 3),
    46: ("<|tool>", 3),
    47: ("<tool|>", 3),
    48: ("<|tool_call>", 4),
    49: ("<tool_call|>", 4),
    50: ("<|tool_response>", 4),
    51: ("<tool_response|>", 4),
    52: ('<|"|>', 4),
    98: ("<|think|>", 3),
    100: ("<|channel>", 4),
    101: ("<channel|>", 4),
    105: ("<|turn>", 3),
    106: ("<turn|>", 3),
}
WORDS = ("user", "model", "system", "thought", "call", "\u2581hello", "hello", "\u2581world", "ing")

TEMPLATE = """{{- bos_token -}}
{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else none -%}
{%- if enable_thinking or system is not none or tools -%}
{{- '<|turn>system\\n' -}}
{%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
{%- if system is not none -%}{{- system | trim -}}{%- endif -%}
{%- for tool in tools or [] -%}
{{- '<|tool>declaration:' + tool['function']['name'] + (tool['function'] | tojson) + '<tool|>' -}}
{%- endfor -%}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'tool' -%}
{{- '<|tool_response>response:' + (message['name'] or 'tool') + '{value:<|"|>' + message['content'] -}}
{{- '<|"|>}<tool_response|>' -}}
{%- else -%}
{{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}
{%- for call in message['tool_calls'] or [] -%}
{{- '<|tool_call>call:' + call['function']['name'] + (call['function']['arguments'] | tojson) -}}
{{- '<tool_call|>' -}}
{%- endfor -%}
{{- (message['content'] or '') | trim -}}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""


def tiny_tokenizer(vocab_size: int = 256) -> Tokenizer:
    """A Gemma 4-style BPE vocabulary: specials at Gemma 4's ids, ASCII characters, a few merges."""
    normal = ["\n", "\u2581", *(chr(c) for c in range(33, 127))]
    merges = []
    for word in WORDS:
        for end in range(2, len(word) + 1):
            if word[:end] not in normal:
                normal.append(word[:end])
                merges.append(f"{word[: end - 1]} {word[end - 1]}")
    pieces = iter(normal)
    tokens, types = [], []
    for token_id in range(vocab_size):
        text, kind = SPECIAL_TOKENS.get(token_id) or (next(pieces, None), 1)
        if text is None:
            text, kind = f"<unused{token_id}>", 3
        tokens.append(text)
        types.append(kind)
    metadata = {
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
    }
    return tokenizer_from_gguf_metadata(metadata, source="tiny")


def write_tokenizer(model_dir: Path, *, template: str | None = TEMPLATE, vocab_size: int = 256) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` into ``model_dir``
    (ids past the characters and merges are unused control tokens, left out of decoded text)."""
    tiny_tokenizer(vocab_size).backend.save(str(model_dir / "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(specials))
    if template is not None:
        (model_dir / "chat_template.jinja").write_text(template)


def servable_copy(checkpoint: Path, dst: Path) -> Path:
    """A copy of a tiny checkpoint with the tokenizer and chat template written next to it."""
    shutil.copytree(checkpoint, dst)
    write_tokenizer(dst)
    return dst
