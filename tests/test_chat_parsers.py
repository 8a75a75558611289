"""Output parsing: reasoning channel, Gemma 4 tool calls, streaming in arbitrary chunks."""

from __future__ import annotations

import itertools
import json

import pytest

from gemma_mtp.chat import (
    ChatEvent,
    ChatOutputParser,
    ParsedOutput,
    collect_events,
    parse_chat_output,
    parse_tool_call,
)

Q = '<|"|>'


def ids() -> itertools.count:
    return itertools.count(1)


def parse(text: str) -> ParsedOutput:
    counter = ids()
    return parse_chat_output(text, make_id=lambda: f"call_{next(counter)}")


def stream(chunks: list[str]) -> tuple[list[ChatEvent], ParsedOutput]:
    counter = ids()
    parser = ChatOutputParser(make_id=lambda: f"call_{next(counter)}")
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.finish()
    return events, collect_events(events)


def arguments(call: dict) -> dict:
    return json.loads(call["function"]["arguments"])


def test_plain_text_is_content() -> None:
    assert parse("Hello, world!") == ParsedOutput(content="Hello, world!")


def test_thought_channel_becomes_reasoning() -> None:
    out = parse("<|channel>thought\nThe user greets me.\n<channel|>Hi there!")
    assert out == ParsedOutput(content="Hi there!", reasoning="The user greets me.\n")


def test_empty_thought_channel_leaves_only_content() -> None:
    assert parse("<|channel>thought\n<channel|>Answer.<|channel>thought\n<channel|>") == ParsedOutput(
        content="Answer."
    )


def test_unterminated_reasoning_is_still_reasoning() -> None:
    assert parse("<|channel>thought\nstill thinking") == ParsedOutput(reasoning="still thinking")


def test_stray_channel_close_is_dropped() -> None:
    assert parse("Answer<channel|> more") == ParsedOutput(content="Answer more")


def test_tool_call_becomes_an_openai_tool_call() -> None:
    text = f"<|tool_call>call:get_weather{{city:{Q}Paris{Q},days:3}}<tool_call|>"
    out = parse(text)
    assert out.content == "" and out.reasoning == ""
    assert out.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":3}'},
        }
    ]


def test_every_value_type_converts_to_json() -> None:
    text = (
        f'call:f{{s:{Q}a, b: {{c}} [d] "e" ü\n{Q},i:-42,x:1.50,e:2e-3,t:true,f:false,z:null,'
        f"nested:{{inner:{{deep:[1,{Q}two{Q},{{}}]}}}},list:[],empty:{{}},{Q}quoted key{Q}:1}}"
    )
    name, args = parse_tool_call(text)
    assert name == "f"
    assert json.loads(args) == {
        "s": 'a, b: {c} [d] "e" ü\n',
        "i": -42,
        "x": 1.5,
        "e": 0.002,
        "t": True,
        "f": False,
        "z": None,
        "nested": {"inner": {"deep": [1, "two", {}]}},
        "list": [],
        "empty": {},
        "quoted key": 1,
    }
    assert '"x":1.50' in args  # numbers are kept as written


def test_whitespace_between_tokens_is_tolerated() -> None:
    assert json.loads(parse_tool_call(f"call:f{{ a: 1 , b : [ 1 , {Q}x{Q} ] }}")[1]) == {
        "a": 1,
        "b": [1, "x"],
    }


def test_several_tool_calls_and_surrounding_text() -> None:
    text = (
        "<|channel>thought\nNeed two lookups.<channel|>Checking."
        f"<|tool_call>call:a{{}}<tool_call|><|tool_call>call:b{{k:{Q}v{Q}}}<tool_call|>"
    )
    out = parse(text)
    assert out.reasoning == "Need two lookups." and out.content == "Checking."
    assert [(c["id"], c["function"]["name"], arguments(c)) for c in out.tool_calls] == [
        ("call_1", "a", {}),
        ("call_2", "b", {"k": "v"}),
    ]


def test_tool_call_close_inside_a_string_does_not_end_the_call() -> None:
    out = parse(f"<|tool_call>call:echo{{text:{Q}say <tool_call|> literally{Q}}}<tool_call|>done")
    assert arguments(out.tool_calls[0]) == {"text": "say <tool_call|> literally"}
    assert out.content == "done"


def test_unclosed_but_complete_tool_call_is_accepted_at_the_end() -> None:
    out = parse("<|tool_call>call:f{a:1}")
    assert arguments(out.tool_calls[0]) == {"a": 1}


@pytest.mark.parametrize(
    "body",
    [
        "call:f{a:1",  # unbalanced
        "call:f{a:}",  # missing value
        "call:f{a:bare}",  # unquoted string
        "call:f{a:1}{b:2}",  # trailing text
        "call:{a:1}",  # no name
        "f{a:1}",  # no call: prefix
        "call:f",  # no arguments
        f"call:f{{a:{Q}open}}",  # unterminated string
        "call:f{a:1,}",  # trailing comma
        "call:f{:1}",  # empty key
        "call:f{a:[1 2]}",  # missing comma
    ],
)
def test_malformed_tool_call_degrades_to_content(body: str) -> None:
    text = f"Before <|tool_call>{body}<tool_call|> after"
    assert parse(text) == ParsedOutput(content=text)
    with pytest.raises(ValueError):
        parse_tool_call(body)


def test_unterminated_malformed_tool_call_is_content() -> None:
    assert parse("x<|tool_call>call:f{a:") == ParsedOutput(content="x<|tool_call>call:f{a:")


def test_quote_token_outside_a_call_is_content() -> None:
    assert parse(f"say {Q}hi{Q}") == ParsedOutput(content=f"say {Q}hi{Q}")


def test_partial_marker_at_chunk_end_is_held_back() -> None:
    parser = ChatOutputParser(make_id=lambda: "call_x")
    assert parser.feed("Hello <|to") == [ChatEvent("content", "Hello ")]
    events = parser.feed("ol_call>call:f{}<tool_call|>")
    assert [event.kind for event in events] == ["tool_call"]
    assert parser.feed("a < b <") == [ChatEvent("content", "a < b ")]
    assert parser.finish() == [ChatEvent("content", "<")]


def test_reasoning_streams_before_the_channel_closes() -> None:
    parser = ChatOutputParser()
    assert parser.feed("<|channel>thou") == []
    assert parser.feed("ght\n\nStep one") == [ChatEvent("reasoning", "Step one")]
    assert parser.feed(" and two<chan") == [ChatEvent("reasoning", " and two")]
    assert parser.feed("nel|>Done") == [ChatEvent("content", "Done")]


SAMPLES = [
    "<|channel>thought\nThe user wants weather; call the tool.<channel|>Let me check."
    f"<|tool_call>call:get_weather{{city:{Q}São Paulo{Q},units:[{Q}c{Q}],n:2,deep:{{ok:true}}}}<tool_call|>",
    f"Plain 中文 answer with <b>tags</b> and a < sign, {Q}quoted{Q}<channel|> end",
    "<|channel>thought\n<channel|>Bad <|tool_call>call:f{x:1<tool_call|> then good<|tool_call>call:g{}<tool_call|>",
    "<|channel>thought\nunfinished <|tool_call>",
]


@pytest.mark.parametrize("sample", SAMPLES, ids=range(len(SAMPLES)))
def test_every_split_into_two_chunks_gives_the_same_result(sample: str) -> None:
    whole = parse(sample)
    for cut in range(len(sample) + 1):
        events, joined = stream([sample[:cut], sample[cut:]])
        assert joined == whole, cut
        assert all(event.text or event.tool_call for event in events)


@pytest.mark.parametrize("sample", SAMPLES, ids=range(len(SAMPLES)))
def test_character_by_character_streaming_gives_the_same_result(sample: str) -> None:
    assert stream(list(sample))[1] == parse(sample)


def test_default_ids_look_like_openai_ids() -> None:
    call = parse_chat_output("<|tool_call>call:f{}<tool_call|>").tool_calls[0]
    assert call["id"].startswith("call_") and len(call["id"]) == 29
