"""Tool-call parsers on replies as each family's models write them (the formats of Hermes-2-Pro / Qwen2.5,
Qwen3-Coder, Llama-3.1/3.2 and Mistral v0.3 / v11 tokenizers): a reply streamed in pieces of any size gives
exactly what the whole reply gives, and text that is no call stays content."""

import json

import pytest

from tunesmith.serve.text import TextStream
from tunesmith.serve.tools import FAMILIES, CallDelta, ContentDelta, ToolStream, family_of, forced_family, forced_schema

WEATHER = {"type": "function", "function": {"name": "get_current_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "state": {"type": "string"}, "days": {"type": "integer"}, "sunny": {"type": "boolean"}}}}}
TOOLS = [WEATHER]


def parse(family: str, reply: str, step: int | None = None, max_calls=None):
    stream = ToolStream(FAMILIES[family], TOOLS, max_calls)
    pieces = []
    for i in range(0, len(reply), step or len(reply) or 1):
        pieces += stream.add(reply[i : i + (step or len(reply))])
    pieces += stream.finish()
    content = "".join(p.text for p in pieces if isinstance(p, ContentDelta))
    # What a client accumulates from the deltas is the parser's call, whatever the pieces.
    joined = [(p.name, "") for p in pieces if isinstance(p, CallDelta) and p.id is not None]
    for p in pieces:
        if isinstance(p, CallDelta) and p.id is None:
            joined[p.index] = (joined[p.index][0], joined[p.index][1] + p.arguments)
    assert joined == [(c.name, c.arguments) for c in stream.calls]
    calls = [(c.name, json.loads(c.arguments)) for c in stream.calls]
    return content, calls, pieces


CASES = [
    # Hermes-2-Pro and Qwen2.5 (the same format), with text before the calls and two calls in a row.
    ("hermes", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Dallas", "state": "TX"}}\n</tool_call>',
     "", [("get_current_weather", {"city": "Dallas", "state": "TX"})]),
    ("hermes", 'I will check both.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Dallas"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Orlando"}}\n</tool_call>',
     "I will check both.", [("get_current_weather", {"city": "Dallas"}), ("get_current_weather", {"city": "Orlando"})]),
    # Brackets, quotes and backslashes inside strings do not end the arguments.
    ("hermes", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Da}l\\"la\\\\s [x]", "days": 2}}\n</tool_call>', "",
     [("get_current_weather", {"city": 'Da}l"la\\s [x]', "days": 2})]),
    # A closing tag inside an argument string is text, not the end of the call (nor is a '}' or ']').
    ("hermes", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "a}</tool_call>]b", "days": 1}}\n</tool_call>\nDone.', "Done.",
     [("get_current_weather", {"city": "a}</tool_call>]b", "days": 1})]),
    ("qwen", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "</tool_call>"}}\n</tool_call>', "",
     [("get_current_weather", {"city": "</tool_call>"})]),
    # Hermes-2-Pro's own template writes the arguments first, and a space after the closing tag; two calls.
    ("hermes", '<tool_call>\n{ "arguments": {"city": "서울", "state": "{\\"x\\": 1}"}, "name": "get_current_weather"}\n</tool_call> \n'
     '<tool_call>\n{ "arguments": {}, "name": "get_current_weather"}\n</tool_call> ', "",
     [("get_current_weather", {"city": "서울", "state": '{"x": 1}'}), ("get_current_weather", {})]),
    # The reply ended (EOS) before the closing tag.
    ("hermes", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "서울"}}\n', "", [("get_current_weather", {"city": "서울"})]),
    ("hermes", "The weather in Dallas is sunny.", "The weather in Dallas is sunny.", []),
    # No closing tag, text instead: the call, then the text as content (not dropped as markup).
    ("hermes", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Lima"}}\nI will tell you soon.', "I will tell you soon.",
     [("get_current_weather", {"city": "Lima"})]),
    ("hermes", '<tool_call>\n{"name": get_current_weather}\n</tool_call>', '<tool_call>\n{"name": get_current_weather}\n</tool_call>', []),
    # Qwen3-Coder: XML parameters, read with the tool's types.
    ("qwen", "<tool_call>\n<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
     "</function>\n</tool_call>", "", [("get_current_weather", {"city": "Dallas", "days": 3})]),
    ("qwen", '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [("get_current_weather", {"city": "Paris"})]),
    # Its template writes a boolean with Jinja's `| string`, Python's True / False; a string parameter stays as written.
    ("qwen", "<tool_call>\n<function=get_current_weather>\n<parameter=sunny>\nTrue\n</parameter>\n<parameter=city>\nTrue\n</parameter>\n"
     "</function>\n</tool_call>", "", [("get_current_weather", {"sunny": True, "city": "True"})]),
    # Llama 3.1/3.2: the JSON is the reply; <|python_tag|> and ';' between several calls.
    ("llama3", '{"name": "get_current_weather", "parameters": {"city": "San Francisco", "state": "CA"}}', "",
     [("get_current_weather", {"city": "San Francisco", "state": "CA"})]),
    ("llama3", '<|python_tag|>{"name": "get_current_weather", "parameters": {"city": "A"}}; {"name": "get_current_weather", "parameters": {"city": "B"}}',
     "", [("get_current_weather", {"city": "A"}), ("get_current_weather", {"city": "B"})]),
    # A ',' between calls (Phi-4-mini's template), and one that is followed by text: the text stays content.
    ("llama3", '{"name": "get_current_weather", "arguments": {"city": "A"}},{"name": "get_current_weather", "arguments": {"city": "B"}}', "",
     [("get_current_weather", {"city": "A"}), ("get_current_weather", {"city": "B"})]),
    ("llama3", '{"name": "get_current_weather", "parameters": {"city": "A"}}, then I am done', ", then I am done", [("get_current_weather", {"city": "A"})]),
    ("llama3", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3", 'Here is JSON: {"name": "x"}', 'Here is JSON: {"name": "x"}', []),
    # Mistral v0.3 (a JSON list) and v11+ tokenizers (name then arguments, with or without [ARGS]).
    ("mistral", '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"city": "San Francisco", "state": "CA"}}]', "",
     [("get_current_weather", {"city": "San Francisco", "state": "CA"})]),
    ("mistral", '[TOOL_CALLS][{"arguments": {"city": "Paris"}, "name": "get_current_weather"}, {"name": "get_current_weather", "arguments": {"city": "Rome"}}]',
     "", [("get_current_weather", {"city": "Paris"}), ("get_current_weather", {"city": "Rome"})]),
    ("mistral", '[TOOL_CALLS]get_current_weather{"city": "San Francisco"}[TOOL_CALLS]get_current_weather[ARGS]{"city": "LA"}', "",
     [("get_current_weather", {"city": "San Francisco"}), ("get_current_weather", {"city": "LA"})]),
    ("mistral", "This is a test", "This is a test", []),
]


@pytest.mark.parametrize("family, reply, content, calls", CASES)
def test_each_family_parses_its_models_replies_alike_whole_and_streamed(family, reply, content, calls):
    whole = parse(family, reply)
    assert whole[:2] == (content, calls)
    for step in (1, 2, 3, 7):
        assert parse(family, reply, step)[:2] == whole[:2], step


def test_call_deltas_have_openai_stream_shape_and_ids():
    _, _, pieces = parse("hermes", CASES[1][1], step=4)
    calls = [p.as_dict() for p in pieces if isinstance(p, CallDelta)]
    assert calls[0] == {"index": 0, "id": calls[0]["id"], "type": "function", "function": {"name": "get_current_weather", "arguments": ""}}
    second = next(i for i, c in enumerate(calls) if c["index"] == 1)
    # The arguments arrive as they are written, four characters at a time here, not once per call.
    assert [c["function"]["arguments"] for c in calls[1:second]] == ['{"ci', 'ty":', ' "Da', 'llas', '"}']
    assert all(set(c) == {"index", "function"} for c in calls[1:second])
    assert calls[second]["id"] != calls[0]["id"] and calls[0]["id"].startswith("call_")
    # Mistral's templates refuse call ids that are not 9 letters or digits.
    _, _, pieces = parse("mistral", next(c[1] for c in CASES if c[0] == "mistral"))
    assert all(len(p.id) == 9 and p.id.isalnum() for p in pieces if isinstance(p, CallDelta) and p.id)


def test_parallel_tool_calls_false_stops_at_the_first_call():
    stream = ToolStream(FAMILIES["hermes"], TOOLS, max_calls=1)
    stream.add(CASES[1][1])
    assert stream.done and [c.name for c in stream.calls] == ["get_current_weather"]
    assert json.loads(stream.calls[0].arguments) == {"city": "Dallas"}


@pytest.mark.parametrize("source, family", [
    # Excerpts of the real templates: how each writes a call.
    ('{{- "<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>" }}', "hermes"),      # Qwen2.5
    ("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}", "qwen"),                                                    # Qwen3-Coder
    ("{%- if builtin_tools is defined or tool_calls %}{{- '<|python_tag|>' }}", "llama3"),                                      # Llama-3.1
    ('{{- "<|start_header_id|>user<|end_header_id|>\\n\\n" + "{\\"name\\": function name, \\"parameters\\": dictionary}" }}', "llama3"),  # Llama-3.2
    ('{{- "[TOOL_CALLS] [" }}', "mistral"),                                                                                     # Mistral-7B v0.3
    ("{{ '<|im_start|>' + message['role'] }}", "hermes"),                                                                       # no tool format: the built-in one
])
def test_the_family_is_read_from_the_template(source, family):
    assert family_of(source) == family


def test_forced_replies_are_calls_of_real_tools():
    schema = forced_schema(TOOLS, None, parallel=False)
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"] == {"const": "get_current_weather"}
    assert forced_schema(TOOLS, "get_current_weather", parallel=True) == WEATHER["function"]["parameters"]



@pytest.mark.parametrize("named, reply, calls", [
    (None, '[{"name":"get_current_weather","parameters":{"city":"Seoul"}},{"name":"get_current_weather","parameters":{}}]',
     [("get_current_weather", '{"city":"Seoul"}'), ("get_current_weather", "{}")]),
    ("get_current_weather", '{"city":"Seoul","days":3}', [("get_current_weather", '{"city":"Seoul","days":3}')]),
    ("get_current_weather", '{"city":"Se', [("get_current_weather", '{"city":"Se')]),   # cut by max_tokens: the call stands
])
def test_forced_replies_stream_their_calls_as_they_are_decoded(named, reply, calls):
    for step in (1, 3, len(reply)):
        stream = ToolStream(forced_family(FAMILIES["mistral"], named), TOOLS)
        pieces = [d for i in range(0, len(reply), step) for d in stream.add(reply[i : i + step])] + stream.finish()
        assert [(c.name, c.arguments) for c in stream.calls] == calls and not any(isinstance(p, ContentDelta) for p in pieces)
        assert all(len(c.id) == 9 for c in stream.calls)   # the template family's ids
        if step == 1:
            assert sum(1 for p in pieces if isinstance(p, CallDelta) and p.index == 0) > 3


def test_special_marker_tokens_survive_decoding_only_when_kept(smol_tokenizer):
    """[TOOL_CALLS] and <|python_tag|> are special tokens: decoding drops them unless the parser needs them."""
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    marker = tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")
    ids = [marker] + tokenizer('[{"name": "f", "arguments": {}}]', add_special_tokens=False)["input_ids"]
    assert TextStream(tokenizer).add(ids) == '[{"name": "f", "arguments": {}}]'
    kept = TextStream(tokenizer, keep={marker: "[TOOL_CALLS]"})
    text = "".join(kept.add([i]) for i in ids) + kept.flush()
    assert text == '[TOOL_CALLS][{"name": "f", "arguments": {}}]'


def feed(family: str, pieces: list[str]):
    stream = ToolStream(FAMILIES[family], TOOLS)
    out = [d for piece in pieces for d in stream.add(piece)] + stream.finish()
    return "".join(p.text for p in out if isinstance(p, ContentDelta)), stream.calls, out


@pytest.mark.parametrize("case", [c for c in CASES if c[3]], ids=lambda c: c[0])
def test_every_family_streams_the_arguments_of_a_call_as_they_are_written(case):
    family, reply, _, calls = case
    _, _, pieces = parse(family, reply, step=1)
    first = [p for p in pieces if isinstance(p, CallDelta) and p.index == 0]
    assert first[0].id is not None and first[0].name == calls[0][0] and first[0].as_dict()["function"]["arguments"] == ""
    args_before_name = reply.index('"arguments"') < reply.index('"name"') if '"name"' in reply and '"arguments"' in reply else False
    assert len(first) > (2 if not args_before_name else 1)   # more than one piece of arguments
    # The second call starts only after the first is complete.
    indexes = [p.index for p in pieces if isinstance(p, CallDelta)]
    assert indexes == sorted(indexes)


def test_markup_split_across_tokens_never_leaks_into_content():
    content, calls, _ = feed("hermes", ["Sure.", "\n<tool_", "call", ">\n{\"na", 'me": "get_current_weather", "argu', 'ments": {"city": ',
                                        '"Seoul"}}\n</tool_', "call>"])
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_current_weather", {"city": "Seoul"})]
    content, calls, _ = feed("mistral", ["[TOOL_", "CALLS]get_current", "_weather[AR", 'GS]{"city": "Rome"}'])
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_current_weather", '{"city": "Rome"}')]


@pytest.mark.parametrize("family, pieces", [
    ("hermes", ["I use <tool", "s> and <tool_call", "ing> in prose."]),
    ("hermes", ["<tool_call> is the tag I would use."]),
    ("qwen", ["<tool_call>\n<function", " is not a tag"]),
    ("mistral", ["[TOOL", "S] are fine; [TOOL_CALLS] is one too"]),
    ("llama3", ["{not JSON at all"]),
])
def test_text_that_only_looks_like_the_start_of_markup_is_content(family, pieces):
    content, calls, _ = feed(family, pieces)
    assert content == "".join(pieces) and calls == []


def test_a_call_cut_off_inside_its_arguments_stands_with_the_arguments_written():
    """max_tokens ran out inside a call: the call is out (its name and what was written of its arguments, not
    JSON) with finish_reason length; cut before its arguments began, the text is content."""
    from tunesmith.serve.chat import Choice, Plan

    reply = 'Checking.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Dal'
    choice = Choice(Plan(TOOLS, FAMILIES["hermes"]), tokenizer=None, logprobs=None)
    deltas = [d for ch in reply for d in choice.add(ch, [])]
    last, reason = choice.finish("length")
    deltas += last
    assert reason == "length" and choice.content == "Checking."
    assert choice.message()["tool_calls"] == [{"id": choice.calls[0]["id"], "type": "function",
                                               "function": {"name": "get_current_weather", "arguments": '{"city": "Dal'}}]
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d) == '{"city": "Dal'
    for family, cut in [("hermes", '<tool_call>\n{"name": "get_curr'), ("llama3", '{"name": "get_current_weather", "para'),
                        ("mistral", "[TOOL_CALLS]get_current_weather[AR")]:
        content, calls, _ = feed(family, list(cut))
        assert (content, calls) == (cut, []), family


def test_several_calls_in_one_answer_are_indexed_in_order():
    reply = next(c[1] for c in CASES if c[0] == "llama3" and len(c[3]) == 2)   # two calls after <|python_tag|>
    _, calls, pieces = parse("llama3", reply, step=3)
    headers = [p for p in pieces if isinstance(p, CallDelta) and p.id is not None]
    assert [h.index for h in headers] == [0, 1] and headers[0].id != headers[1].id
    assert calls == [("get_current_weather", {"city": "A"}), ("get_current_weather", {"city": "B"})]


# Arguments that trip a parser reading markup rather than JSON: Korean, nesting, and call markup inside strings.
TRICKY = {"order_id": "주문-1}</tool_call>[TOOL_CALLS]", "note": {"lines": [1, {"b": "]}"}], "ok": True}}
ORDER = {"type": "function", "function": {"name": "lookup_order", "description": "Find an order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string", "description": "its id"}, "note": {"type": "object", "description": "more"}}}}}
REFUND = {"type": "function", "function": {"name": "refund", "description": "Refund an order", "parameters": {
    "type": "object", "properties": {"amount": {"type": "number", "description": "dollars"}}}}}


# Qwen3-Coder's XML has no escaping: a parameter holding '</parameter>' or '</tool_call>' cannot be written. The rest can.
PLAIN = {"order_id": "주문-1}]", "note": {"lines": [1, {"b": "]}"}], "ok": True}, "urgent": True, "count": 3}
ORDER_XML = {"type": "function", "function": {**ORDER["function"], "parameters": {**ORDER["function"]["parameters"], "properties": {
    **ORDER["function"]["parameters"]["properties"], "urgent": {"type": "boolean"}, "count": {"type": "integer"}}}}}


@pytest.mark.parametrize("file, family, parallel", [
    ("qwen3-coder-tools.jinja", "qwen", True),
    ("qwen2.5-tools.jinja", "hermes", True),
    ("hermes-2-pro-tools.jinja", "hermes", True),
    ("mistral-v0.3-tools.jinja", "mistral", True),
    ("llama-3.1-tools.jinja", "llama3", False),   # one call per turn: the template refuses two
    ("phi-4-mini-tools.jinja", "llama3", True),   # its calls are JSON objects as the whole reply, joined by ','
    ("chatml.jinja", "hermes", True),             # no tools of its own: the built-in Hermes format
])
def test_the_parser_picked_for_a_template_reads_back_exactly_the_calls_it_renders(file, family, parallel, smol_tokenizer):
    from tests.data.test_real_templates import TEMPLATES
    from tunesmith.data.templates import resolve_template
    from tunesmith.serve.tools import template_family

    template = resolve_template(str(TEMPLATES / file), smol_tokenizer)
    assert template_family(template, smol_tokenizer).name == family
    xml = family == "qwen"
    calls = [("lookup_order", PLAIN if xml else TRICKY), ("refund", {"amount": 2.5})][: 2 if parallel else 1]
    tools = [ORDER_XML if xml else ORDER, REFUND]
    user = [{"role": "user", "content": "Where is my order?"}]
    made = [{"id": f"abcdefgh{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False)}} for i, (n, a) in enumerate(calls)]
    prompt = template.render(smol_tokenizer, user, add_generation_prompt=True, tools=tools)
    full = template.render(smol_tokenizer, [*user, {"role": "assistant", "content": None, "tool_calls": made}], tools=tools)
    assert full.startswith(prompt)
    reply = full[len(prompt):]
    for end in [template.turn_end, *template.stop_texts, smol_tokenizer.eos_token]:
        reply = reply.split(end.strip())[0] if end and end.strip() else reply
    for step in (1, 5, len(reply)):
        stream = ToolStream(FAMILIES[family], tools)
        pieces = [p for i in range(0, len(reply), step) for p in stream.add(reply[i : i + step])] + stream.finish()
        assert [(c.name, json.loads(c.arguments)) for c in stream.calls] == calls, step
        assert "".join(p.text for p in pieces if isinstance(p, ContentDelta)).strip() == ""
