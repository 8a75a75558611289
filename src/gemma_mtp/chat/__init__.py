"""Chat: rendering a model's chat template, and parsing its output into content, reasoning and
tool calls (Gemma 4's ``<|channel>`` and ``<|tool_call>`` syntax)."""

from .parser import (
    ChatEvent,
    ChatOutputParser,
    ParsedOutput,
    collect_events,
    parse_chat_output,
    parse_tool_call,
)
from .template import ChatTemplate, read_chat_template, render_chat, to_gemma_tool_messages

__all__ = [
    "ChatTemplate",
    "render_chat",
    "read_chat_template",
    "to_gemma_tool_messages",
    "ChatEvent",
    "ChatOutputParser",
    "ParsedOutput",
    "collect_events",
    "parse_chat_output",
    "parse_tool_call",
]
