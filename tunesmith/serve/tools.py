"""Tool calls out of a model's reply: one parser per template family, the same code for streamed and whole replies.

A reply is text, then (maybe) a tool-call section that begins at a family's marker:

    hermes   <tool_call>{"name": "f", "arguments": {...}}</tool_call>        Hermes, Qwen2.5/Qwen3, the built-in tool template
    qwen     hermes' JSON, or Qwen3-Coder's <tool_call><function=f><parameter=x>1</parameter></function></tool_call>
    llama3   {"name": "f", "parameters": {...}} as the whole reply, or after <|python_tag|>; several joined by ';'
    mistral  [TOOL_CALLS][{"name": "f", "arguments": {...}}]  (v0.3), or [TOOL_CALLS]f{...} / f[ARGS]{...} (v11+)

The family is read from the run's template (`family_of`) and can be overridden (`tunesmith serve --tool-parser`).
`ToolStream` is fed text deltas and hands out content deltas and tool-call deltas in OpenAI's stream shape (a
call's id and name first, then its arguments); a whole reply is the same stream joined, so both agree. A
section that is not a well-formed call comes back as content, never dropped.

With tool_choice `required` or a named function, the reply is decoded under a JSON schema instead (vLLM's way:
an array of {"name", "parameters"}, or the named function's arguments), parsed by `forced_calls`.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tunesmith.serve.text import held_back


@dataclass
class Call:
    name: str
    arguments: str   # JSON text of an object
    id: str


@dataclass
class Family:
    name: str
    markers: tuple[str, ...]      # where a tool-call section begins
    take: Callable                # (section, final, tools) -> ([(name, arguments dict)], characters used)
    leading_json: bool = False    # a reply whose first character is '{' is a call section (Llama 3)
    short_ids: bool = False       # Mistral's templates want 9-character alphanumeric call ids
    special_texts: tuple[str, ...] = ()   # marker tokens that decoding must keep although they are special

    def new_id(self) -> str:
        if self.short_ids:
            return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
        return f"call_{uuid.uuid4().hex[:24]}"


class NotACall(ValueError):
    """The section cannot be read as a tool call (and more text will not change that)."""


_DECODER = json.JSONDecoder()


def _json_at(text: str, start: int) -> tuple[object, int] | None:
    """The JSON value beginning at `start` and where it ends; None while it may still be incomplete."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        if _unclosed(text, start):
            return None   # ran out of text: wait for more
        raise NotACall(f"not JSON: {err.msg}") from None


def _unclosed(text: str, start: int) -> bool:
    """Whether a string or bracket opened at or after `start` is still open at the end of `text`."""
    depth, in_string, escaped = 0, False, False
    for ch in text[start:]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth <= 0:
                return False
    return in_string or depth > 0


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _name_and_arguments(obj, keys=("arguments", "parameters")) -> tuple[str, dict]:
    if isinstance(obj, dict) and obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise NotACall("a call needs a name")
    arguments = next((obj[k] for k in keys if k in obj), {})
    if isinstance(arguments, str):   # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise NotACall("arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise NotACall("arguments must be an object")
    return obj["name"], arguments


def _tagged(section: str, final: bool, body: Callable) -> tuple[list, int, bool]:
    """Calls in <tool_call>...</tool_call> tags; the last may lack its closing tag when the reply ended there."""
    calls, used = [], 0
    while True:
        i = _skip_space(section, used)
        if not section.startswith("<tool_call>", i):
            return calls, used, "<tool_call>".startswith(section[i:])
        start = i + len("<tool_call>")
        end = section.find("</tool_call>", start)
        if end < 0 and not final:
            return calls, used, True
        inner = section[start:] if end < 0 else section[start:end]
        calls.append(body(inner.strip()))
        used = len(section) if end < 0 else end + len("</tool_call>")


def _hermes_body(inner: str, tools) -> tuple[str, dict]:
    found = _json_at(inner, 0)
    if found is None or inner[found[1]:].strip():
        raise NotACall("the tag holds no single JSON object")
    return _name_and_arguments(found[0])


_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)


def _qwen_body(inner: str, tools) -> tuple[str, dict]:
    if not inner.startswith("<function="):
        return _hermes_body(inner, tools)
    match = _FUNCTION.fullmatch(inner)
    if match is None:
        raise NotACall("not a <function=...> block")
    name, body = match.groups()
    types = _parameter_types(tools, name)
    return name, {key: _typed(value, types.get(key)) for key, value in _PARAMETER.findall(body)}


def _parameter_types(tools, name: str) -> dict:
    for tool in tools or []:
        if tool["function"]["name"] == name:
            return {k: v.get("type") for k, v in (tool["function"].get("parameters") or {}).get("properties", {}).items()}
    return {}


def _typed(value: str, kind) -> object:
    """Qwen3-Coder writes every parameter as text: read it as the tool's schema types it."""
    if kind in (None, "string") or (isinstance(kind, list) and "string" in kind):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# Each take_<family>(section, final, tools) -> (calls [(name, arguments)], characters used, pending): `pending`
# when the text after `used` may still become a call as more text arrives.


def take_hermes(section: str, final: bool, tools) -> tuple[list, int, bool]:
    return _tagged(section, final, lambda inner: _hermes_body(inner, tools))


def take_qwen(section: str, final: bool, tools) -> tuple[list, int, bool]:
    return _tagged(section, final, lambda inner: _qwen_body(inner, tools))


def take_llama3(section: str, final: bool, tools) -> tuple[list, int, bool]:
    calls, used = [], 0
    i = _skip_space(section, 0)
    if section.startswith("<|python_tag|>", i):
        used = i = i + len("<|python_tag|>")
    while True:
        i = _skip_space(section, i)
        if section.startswith(";", i):   # between two calls
            i = _skip_space(section, i + 1)
        if i == len(section):
            return calls, used, True
        if section[i] != "{":
            return calls, used, False
        found = _json_at(section, i)
        if found is None:
            if final:
                raise NotACall("the reply ended inside a call")
            return calls, used, True
        calls.append(_name_and_arguments(found[0]))
        used = i = found[1]


_MISTRAL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _mistral_v11(section: str, i: int) -> tuple[tuple[str, dict], int] | None:
    """(name, arguments) of `name[ARGS]{...}` or `name{...}` at i, and where it ends; None while incomplete."""
    match = _MISTRAL_NAME.match(section, i)
    j = match.end() if match else i
    if section.startswith("[ARGS]", j):
        j += len("[ARGS]")
    elif "[ARGS]".startswith(section[j:]):
        return None
    j = _skip_space(section, j)
    if j == len(section):
        return None
    if match is None or section[j] != "{":
        raise NotACall("[TOOL_CALLS] is not followed by a function name and its arguments")
    found = _json_at(section, j)
    if found is None:
        return None
    if not isinstance(found[0], dict):
        raise NotACall("the arguments are not an object")
    return (match.group(0), found[0]), found[1]


def take_mistral(section: str, final: bool, tools) -> tuple[list, int, bool]:
    calls, used = [], 0
    while True:
        i = _skip_space(section, used)
        if not section.startswith("[TOOL_CALLS]", i):
            return calls, used, False
        i = _skip_space(section, i + len("[TOOL_CALLS]"))
        if i < len(section) and section[i] == "[":   # v0.3: a JSON list of calls
            found = _json_at(section, i)
            if found is not None and not isinstance(found[0], list):
                raise NotACall("[TOOL_CALLS] is not followed by a list")
            pairs = [] if found is None else [_name_and_arguments(obj) for obj in found[0]]
        else:                                         # v11+: name, maybe [ARGS], then the arguments object
            found = _mistral_v11(section, i)
            pairs = [] if found is None else [found[0]]
            found = None if found is None else (None, found[1])
        if found is None:
            if final:
                raise NotACall("the reply ended inside a call")
            return calls, used, True
        calls += pairs
        used = found[1]


FAMILIES = {
    "hermes": Family("hermes", ("<tool_call>",), take_hermes),
    "qwen": Family("qwen", ("<tool_call>",), take_qwen),
    "llama3": Family("llama3", ("<|python_tag|>",), take_llama3, leading_json=True, special_texts=("<|python_tag|>",)),
    "mistral": Family("mistral", ("[TOOL_CALLS]",), take_mistral, short_ids=True, special_texts=("[TOOL_CALLS]", "[ARGS]")),
}


def family_of(template_source: str) -> str:
    """The parser for a template, read from how it writes tool calls (hermes, the built-in format, otherwise)."""
    if "<function=" in template_source:
        return "qwen"
    if "<tool_call>" in template_source:
        return "hermes"
    if "[TOOL_CALLS]" in template_source:
        return "mistral"
    if "<|python_tag|>" in template_source or ("<|start_header_id|>" in template_source and "parameters" in template_source):
        return "llama3"
    return "hermes"


@dataclass
class ContentDelta:
    text: str


@dataclass
class CallDelta:
    """One piece of a call in OpenAI's stream shape: the first has id and name (arguments ''), then arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_dict(self) -> dict:
        if self.id is not None:
            return {"index": self.index, "id": self.id, "type": "function", "function": {"name": self.name, "arguments": ""}}
        return {"index": self.index, "function": {"arguments": self.arguments}}


@dataclass
class ToolStream:
    """Text deltas in, content and call deltas out. `done` turns true once max_calls calls are out."""

    family: Family
    tools: list[dict]
    max_calls: int | None = None
    calls: list[Call] = field(default_factory=list)
    _text: str = ""                 # text not yet handed out
    _in_calls: bool = False         # inside a tool-call section
    _started: bool = False          # a non-space character has arrived

    @property
    def done(self) -> bool:
        return self.max_calls is not None and len(self.calls) >= self.max_calls

    def add(self, text: str) -> list:
        self._text += text
        return self._advance(final=False)

    def finish(self) -> list:
        return self._advance(final=True)

    def _advance(self, final: bool) -> list:
        out = []
        while not self.done:
            if not self._in_calls:
                if not self._started:
                    stripped = self._text.lstrip()
                    if not stripped and not final:
                        return out
                    self._started = True
                    if self.family.leading_json and stripped.startswith("{"):
                        self._text, self._in_calls = stripped, True
                        continue
                at = min((i for i in (self._text.find(m) for m in self.family.markers) if i >= 0), default=-1)
                if at < 0:
                    # Held back: what may be the start of a marker, and trailing space (the layout before a section).
                    cut = len(self._text) if final else len(self._text) - held_back(self._text, list(self.family.markers))
                    cut = cut if final else len(self._text[:cut].rstrip())
                    out += self._content(self._text[:cut])
                    self._text = self._text[cut:]
                    return out
                out += self._content(self._text[:at].rstrip())
                self._text, self._in_calls = self._text[at:], True
            try:
                found, used, pending = self.family.take(self._text, final, self.tools)
            except NotACall:
                out += self._content(self._text)   # not a call after all: the model's text, shown as it is
                self._text, self._in_calls = "", False
                return out
            for name, arguments in found:
                if not self.done:
                    out += self._call(name, arguments)
            self._text = self._text[used:]
            if not self._text.strip():
                if final:
                    self._text = ""
                return out
            if pending and not final:
                return out
            self._in_calls = False   # text after the calls: content again (and maybe more sections)
        return out

    def _content(self, text: str) -> list:
        return [ContentDelta(text)] if text else []

    def _call(self, name: str, arguments: dict) -> list:
        call = Call(name, json.dumps(arguments, ensure_ascii=False), self.family.new_id())
        self.calls.append(call)
        index = len(self.calls) - 1
        return [CallDelta(index, call.id, name), CallDelta(index, arguments=call.arguments)]


def forced_schema(tools: list[dict], named: str | None, parallel: bool) -> dict:
    """The JSON schema a forced reply is decoded under: the named function's arguments, or (required) a list
    of {"name", "parameters"} for any of the tools (one when parallel_tool_calls is false)."""
    parameters = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in tools}
    if named is not None:
        return parameters[named]
    items = {
        "anyOf": [
            {"type": "object", "properties": {"name": {"const": name}, "parameters": schema}, "required": ["name", "parameters"], "additionalProperties": False}
            for name, schema in parameters.items()
        ]
    }
    return {"type": "array", "items": items, "minItems": 1, **({} if parallel else {"maxItems": 1})}


def forced_calls(text: str, named: str | None, family: Family) -> list[Call] | None:
    """The calls of a reply decoded under `forced_schema`; None when it is not one (cut by max_tokens)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    pairs = [(named, value)] if named is not None else [(item["name"], item["parameters"]) for item in value]
    return [Call(name, json.dumps(arguments, ensure_ascii=False), family.new_id()) for name, arguments in pairs]
