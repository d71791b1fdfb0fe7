"""Tool-call accuracy: did the model call the right function, with exactly the right arguments, in valid JSON?

A model's calls are read from its text whatever the template family writes around them: every JSON
object holding a "name" and its "arguments" (Llama 3.1 writes "parameters"), alone or in a list, inside
Hermes' <tool_call> tags, after Mistral's [TOOL_CALLS] or bare. A <tool_call> block that holds no such
object is a call in invalid JSON. Arguments compare as JSON values: key order and 20 against 20.0 do
not matter, "20" against 20 does.

Per row whose reference reply calls tools:
  tool_call_valid   the output holds a call, and every <tool_call> block in it parses
  tool_call_name    it calls the reference's functions (as a multiset: the order of parallel calls is free)
  tool_call_exact   ... each with exactly the reference's arguments
Per row whose reference answers in text (when there are such rows):
  tool_call_none    the output calls no tool
"""

from __future__ import annotations

import json
import re
from collections import Counter

_DECODER = json.JSONDecoder()
_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def parse_calls(text: str) -> list[dict]:
    """The calls in a model's output, each {"name": str, "arguments": dict}, in the order written."""
    calls, at = [], 0
    while (at := _next_json(text, at)) >= 0:
        try:
            value, end = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        found = [c for c in map(as_call, value if isinstance(value, list) else [value]) if c is not None]
        calls += found
        at = end if found else at + 1
    return calls


def as_call(value) -> dict | None:
    """{"name", "arguments"} of a call object in any of the families' shapes, or None for other JSON."""
    if not isinstance(value, dict):
        return None
    function = value.get("function") if isinstance(value.get("function"), dict) else value
    name = function.get("name")
    arguments = function.get("arguments", function.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def valid_calls(text: str) -> bool:
    """The output holds at least one call and no <tool_call> block that fails to parse."""
    return bool(parse_calls(text)) and all(parse_calls(block) for block in _HERMES_BLOCK.findall(text))


def tool_call_scores(outputs: list[str], expected: list[list[dict] | None]) -> dict[str, float]:
    """The metrics above; `expected` holds each row's reference calls ({"name", "arguments"}), None where it answers in text."""
    if len(outputs) != len(expected):
        raise ValueError(f"{len(outputs)} outputs for {len(expected)} references")
    calling = [(o, e) for o, e in zip(outputs, expected) if e]
    texting = [o for o, e in zip(outputs, expected) if not e]
    scores = {}
    if calling:
        parsed = [(parse_calls(o), e) for o, e in calling]
        scores["tool_call_valid"] = sum(valid_calls(o) for o, _ in calling) / len(calling)
        scores["tool_call_name"] = sum(names(got) == names(want) for got, want in parsed) / len(calling)
        scores["tool_call_exact"] = sum(signatures(got) == signatures(want) for got, want in parsed) / len(calling)
    if texting:
        scores["tool_call_none"] = sum(not parse_calls(o) for o in texting) / len(texting)
    return scores


def names(calls: list[dict]) -> Counter:
    return Counter(c["name"] for c in calls)


def signatures(calls: list[dict]) -> Counter:
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


def _next_json(text: str, start: int) -> int:
    """Where the next JSON object or list may start, or -1."""
    found = [i for i in (text.find("{", start), text.find("[", start)) if i >= 0]
    return min(found) if found else -1
