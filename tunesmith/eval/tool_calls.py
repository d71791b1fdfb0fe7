"""Tool-call accuracy: did the model call the right function, with exactly the right arguments, in valid JSON?

The calls are read exactly as `tunesmith serve` reads them into `tool_calls`: by the parser of the family the
model's template selects (tunesmith.serve.tools: hermes, qwen, llama3, mistral; `--tool-parser` overrides it,
as for serve), from the reply decoded as the server decodes it (the family's marker tokens, such as Mistral's
[TOOL_CALLS] and Llama 3's <|python_tag|>, kept although they are special tokens). Arguments compare as JSON
values: key order and 20 against 20.0 do not matter, "20" against 20 does.

Per row whose reference reply calls tools:
  tool_call_valid   the server would return at least one call, each with arguments that are a JSON object (not
                    so for a call cut off inside them), and no call section as content (markup that is no
                    well-formed call, e.g. a <tool_call> block whose function name is not a JSON string)
  tool_call_name    it calls the reference's functions (as a multiset: the order of parallel calls is free)
  tool_call_exact   ... each with exactly the reference's arguments
Per row whose reference answers in text (when there are such rows):
  tool_call_none    the server would return no call
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from tunesmith.serve.tools import FAMILIES, Family, ToolStream, template_family


@dataclass
class Reply:
    """A reply as the server returns it: its calls ({"name", "arguments"}: a dict, or the text the model wrote
    when that is no JSON object) and how many call sections it sent back as content instead."""

    calls: list[dict]
    rejected: int

    @property
    def valid(self) -> bool:
        return bool(self.calls) and not self.rejected and all(isinstance(c["arguments"], dict) for c in self.calls)


def tool_family(template, tokenizer, parser: str | None = None) -> Family:
    """The parser of a model's replies, chosen as the server chooses it (tunesmith.serve.tools.template_family:
    `parser`, else the family that reads back the calls the template renders; a ToolFormatError when none does)."""
    return template_family(template, tokenizer, parser)


def read_reply(text: str, family: Family, tools: list[dict] | None = None) -> Reply:
    """The calls the server would return for this reply text (tool_choice auto)."""
    stream = ToolStream(family, tools or [])
    stream.add(text)
    stream.finish()
    return Reply([{"name": c.name, "arguments": json_object(c.arguments)} for c in stream.calls], stream.rejected)


def json_object(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def as_call(function: dict) -> dict:
    """A reference call (a row's tool_calls[i].function, its arguments an object since loading) as {"name", "arguments"}."""
    return {"name": function["name"], "arguments": function["arguments"]}


def tool_call_scores(outputs: list[str], expected: list[list[dict] | None], family: Family | None = None,
                     tools: list[list[dict] | None] | None = None) -> dict[str, float]:
    """The metrics above. `expected`: each row's reference calls ({"name", "arguments"}), None where it answers in
    text; `family`: the parser of the model's template (default hermes, the built-in tool template's format);
    `tools`: each row's tools, as the server would be given them."""
    if len(outputs) != len(expected):
        raise ValueError(f"{len(outputs)} outputs for {len(expected)} references")
    family = family or FAMILIES["hermes"]
    replies = [read_reply(o, family, t) for o, t in zip(outputs, tools or [None] * len(outputs))]
    calling = [(r, e) for r, e in zip(replies, expected) if e]
    texting = [r for r, e in zip(replies, expected) if not e]
    scores = {}
    if calling:
        scores["tool_call_valid"] = sum(r.valid for r, _ in calling) / len(calling)
        scores["tool_call_name"] = sum(names(r.calls) == names(want) for r, want in calling) / len(calling)
        scores["tool_call_exact"] = sum(signatures(r.calls) == signatures(want) for r, want in calling) / len(calling)
    if texting:
        scores["tool_call_none"] = sum(not r.calls for r in texting) / len(texting)
    return scores


def names(calls: list[dict]) -> Counter:
    return Counter(c["name"] for c in calls)


def signatures(calls: list[dict]) -> Counter:
    """Each call as comparable text; arguments that are no JSON object stay text, equal to no reference's."""
    return Counter(json.dumps([c["name"], canonical(c["arguments"])], sort_keys=True, ensure_ascii=False) for c in calls)


def canonical(value):
    """A JSON value with whole floats as integers (20.0 is 20), for comparing arguments."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
