"""Tool calls out of a model's reply: one parser per template family, the same code for streamed and whole replies.

A reply is text, then (maybe) a tool-call section that begins at a family's marker:

    hermes   <tool_call>{"name": "f", "arguments": {...}}</tool_call>        Hermes, Qwen2.5/Qwen3, the built-in tool template
    qwen     hermes' JSON, or Qwen3-Coder's <tool_call><function=f><parameter=x>1</parameter></function></tool_call>
    llama3   {"name": "f", "parameters": {...}} as the whole reply, or after <|python_tag|>; several joined by ';' (or ',')
    mistral  [TOOL_CALLS][{"name": "f", "arguments": {...}}]  (v0.3), or [TOOL_CALLS]f{...} / f[ARGS]{...} (v11+)

The family is the one that reads back the call the run's template renders (`template_family`; a template whose
calls none reads is an error, not calls returned as text) and can be overridden (`tunesmith serve --tool-parser`).
`ToolStream` is fed text deltas and hands out content deltas and tool-call deltas in OpenAI's stream shape (a
call's id and name first, then its arguments); a whole reply is the same stream joined, so both agree. A
section that is not a well-formed call comes back as content, never dropped.

With tool_choice `required` or a named function, the reply is decoded under a JSON schema instead (vLLM's way:
an array of {"name", "parameters"}, or the named function's arguments), read as it streams by `forced_family`.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tunesmith.data.templates import PROBE_CALL, PROBE_TOOL, probe_reply, tool_source
from tunesmith.errors import TunesmithError
from tunesmith.serve.text import held_back


@dataclass
class Call:
    name: str
    arguments: str   # JSON text of an object (as far as it was written, in a call cut off by max_tokens)
    id: str


@dataclass
class Family:
    name: str
    markers: tuple[str, ...]      # where a tool-call section begins
    take: Callable                # (section, final, tools) -> Taken
    leading: tuple[str, ...] = ()  # a reply that begins with one of these is a call section (Llama 3's '{')
    short_ids: bool = False       # Mistral's templates want 9-character alphanumeric call ids
    special_texts: tuple[str, ...] = ()   # marker tokens that decoding must keep although they are special

    def new_id(self) -> str:
        if self.short_ids:
            return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
        return f"call_{uuid.uuid4().hex[:24]}"


class NotACall(ValueError):
    """The section cannot be read as a tool call (and more text will not change that)."""


@dataclass
class Taken:
    """What a family's reader found in a tool-call section so far, reading it from its start.

    `calls`: the complete calls, (name, arguments JSON text). `open`: the call being written, once its name and the
    start of its arguments object are in: (name, the arguments so far), each later reading's a continuation of
    the last. `used`: where the last complete call's markup ends; `pending`: the text after `used` may still
    become a call as more text arrives."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    open: tuple[str, str] | None = None
    used: int = 0
    pending: bool = False


@dataclass
class _Read:
    """One call read at a position: complete (`call`, ending at `end`), still being written (`open`), or neither yet."""

    call: tuple[str, str] | None = None
    open: tuple[str, str] | None = None
    end: int = 0


_DECODER = json.JSONDecoder()


def _json_at(text: str, start: int) -> tuple[object, int] | None:
    """The JSON value beginning at `start` and where it ends; None while it may still be incomplete."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        if _value_end(text, start) is None:
            return None   # ran out of text: wait for more
        raise NotACall(f"not JSON: {err.msg}") from None


_SCALAR = re.compile(r"[^,:\]}\s]*")
# What brackets a JSON value: a whole string (skipped in one match, whatever it holds), a string still open, a bracket.
_TOKENS = re.compile(r'(?P<string>"[^"\\]*(?:\\.[^"\\]*)*")|(?P<open>")|[\[\]{}]')


def _value_end(text: str, start: int) -> int | None:
    """Where the JSON value at `start` ends, by its brackets and strings (not checked further); None while open.
    A section is read again at every token, so this scan runs in the regex engine, not character by character."""
    if text[start] not in '[{"':
        end = _SCALAR.match(text, start).end()
        return None if end == len(text) else end   # 12 may become 123
    depth = 0
    for match in _TOKENS.finditer(text, start):
        if match.group("open") is not None:
            return None
        if match.group("string") is None:
            depth += 1 if match.group() in "[{" else -1
        if depth == 0:
            return match.end()
    return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _name_and_arguments(obj, keys=("arguments", "parameters")) -> tuple[str, str]:
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
    return obj["name"], json.dumps(arguments, ensure_ascii=False)


def _json_call(text: str, start: int, final: bool, keys=("arguments", "parameters")) -> _Read:
    """The call object {"name": ..., "arguments": {...}} at `start` ('{'), its keys in any order.

    Once the name and the '{' of the arguments are in, the call is the model's: its arguments stream as the
    model writes them (their text, untouched) and the call stands even if the reply is cut off inside them
    (`final`). Before that point, anything that cannot be a call is NotACall; an object of another shape (a
    {"type": "function", "function": ...} wrapper, arguments as a JSON string) is read once it is complete."""
    name, arguments, i = None, None, start + 1
    while True:
        i = _skip_space(text, i)
        if name is not None and arguments is not None:
            a, b = arguments
            if b is None:
                b = _value_end(text, a)
            end = None if b is None else _value_end(text, start)
            if end is not None:
                return _Read(call=(name, text[a:b]), end=end)
            partial = text[a : len(text) if b is None else b]
            return _Read(call=(name, partial), end=len(text)) if final else _Read(open=(name, partial))
        if i == len(text):
            break
        if text[i] == "}":
            found = _json_at(text, start)
            return _Read(call=_name_and_arguments(found[0], keys), end=found[1])
        if text[i] == "," and i > start + 1:
            i = _skip_space(text, i + 1)
            if i == len(text):
                break
        if text[i] != '"':
            raise NotACall("not a call object")
        found = _json_at(text, i)
        if found is None:
            break
        key, j = found
        j = _skip_space(text, j)
        if j == len(text):
            break
        if text[j] != ":":
            raise NotACall("not a call object")
        j = _skip_space(text, j + 1)
        if j == len(text):
            break
        if key == "name":
            if text[j] != '"':
                raise NotACall("a call's name is a string")
            found = _json_at(text, j)
            if found is None:
                break
            name, i = found
        elif key in keys and text[j] == "{" and arguments is None:
            b = None if name is not None else _value_end(text, j)   # before the name: skipped, read once it is in
            if name is None and b is None:
                break
            arguments, i = (j, b), (j if b is None else b)
        else:
            i = _value_end(text, j)
            if i is None:
                break
    if final:
        raise NotACall("the reply ended inside a call, before its arguments")
    return _Read()


def _tagged(section: str, final: bool, body: Callable) -> Taken:
    """Calls in <tool_call>...</tool_call> tags; the last may lack its closing tag when the reply ended there.
    Text inside a tag after a call's object is markup (the model's layout), not content."""
    calls, used = [], 0
    while True:
        i = _skip_space(section, used)
        if not section.startswith("<tool_call>", i):
            return Taken(calls, used=used, pending="<tool_call>".startswith(section[i:]))
        start = _skip_space(section, i + len("<tool_call>"))
        close = _closing_tag(section, start)
        inner = section if close < 0 else section[:close]
        try:
            if start == len(inner):
                if close < 0 and not final:
                    return Taken(calls, used=used, pending=True)
                raise NotACall("an empty <tool_call>")
            read = body(inner, start, final or close >= 0)
        except NotACall:
            if calls:   # the calls before stand; this section ends after them
                return Taken(calls, used=used)
            raise
        if read.call is None:
            return Taken(calls, open=read.open, used=used, pending=True)
        after = section[read.end :].lstrip() if close < 0 else ""
        if close < 0 and after and not "</tool_call>".startswith(after):
            calls.append(read.call)   # no closing tag, text instead: the call ends with its object, the text is content
            used = read.end
            continue
        if close < 0 and not final:
            # Complete, but its closing tag is still to come: out now, settled when the tag is in.
            return Taken([*calls, read.call], used=used, pending=True)
        calls.append(read.call)
        used = len(section) if close < 0 else close + len("</tool_call>")


# A JSON string (skipped whole, whatever it holds: a '</tool_call>' in an argument is no closing tag), a string
# still open, or the closing tag.
_CLOSE = re.compile(r'(?P<string>"[^"\\]*(?:\\.[^"\\]*)*")|(?P<open>")|</tool_call>')


def _closing_tag(section: str, start: int) -> int:
    """Where the <tool_call> whose body begins at `start` closes; -1 while it does not (yet). In a JSON body,
    the tag counts only outside strings; Qwen3-Coder's XML parameters are plain text."""
    if not section.startswith("{", start):
        return section.find("</tool_call>", start)
    for match in _CLOSE.finditer(section, start):
        if match.group("open") is not None:
            return -1
        if match.group("string") is None:
            return match.start()
    return -1


def _hermes_body(text: str, start: int, final: bool, tools) -> _Read:
    if text[start] != "{":
        raise NotACall("a <tool_call> holds a JSON object")
    return _json_call(text, start, final)


_FUNCTION = re.compile(r"<function=([^>\s]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?")


def _qwen_body(text: str, start: int, final: bool, tools) -> _Read:
    """Hermes' JSON, or Qwen3-Coder's <function=f><parameter=x>1</parameter></function>: its arguments stream a
    parameter at a time, as the JSON text json.dumps would write."""
    if not text.startswith("<function=", start):
        if "<function=".startswith(text[start:]):
            if final:
                raise NotACall("the reply ended inside a call")
            return _Read()
        return _hermes_body(text, start, final, tools)
    match = _FUNCTION.match(text, start)
    if match is None:
        if final or ">" in text[start:] or any(c.isspace() for c in text[start:]):
            raise NotACall("not a <function=...> block")
        return _Read()
    name, types, pieces, i = match.group(1), _parameter_types(tools, match.group(1)), [], match.end()
    while True:
        i = _skip_space(text, i)
        if text.startswith("</function>", i):
            return _Read(call=(name, "{" + ", ".join(pieces) + "}"), end=i + len("</function>"))
        parameter = _PARAMETER.match(text, i)
        close = -1 if parameter is None else text.find("</parameter>", parameter.end())
        if close < 0:
            break
        value = text[parameter.end() : close]
        value = value[:-1] if value.endswith("\n") else value
        pieces.append(f"{json.dumps(parameter.group(1), ensure_ascii=False)}: {json.dumps(_typed(value, types.get(parameter.group(1))), ensure_ascii=False)}")
        i = close + len("</parameter>")
    partial = (name, "{" + ", ".join(pieces))
    return _Read(call=partial, end=len(text)) if final else _Read(open=partial)


def _parameter_types(tools, name: str) -> dict:
    for tool in tools or []:
        if tool["function"]["name"] == name:
            return {k: v.get("type") for k, v in (tool["function"].get("parameters") or {}).get("properties", {}).items()}
    return {}


# Qwen3-Coder's template writes a parameter that is no object or list with Jinja's `| string`: Python's spelling.
_PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}


def _typed(value: str, kind) -> object:
    """Qwen3-Coder writes every parameter as text: read it as the tool's schema types it (a boolean as its
    template writes one, True or False, too)."""
    if kind in (None, "string") or (isinstance(kind, list) and "string" in kind):
        return value
    if value.strip() in _PYTHON_CONSTANTS:
        return _PYTHON_CONSTANTS[value.strip()]
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# Each take_<family>(section, final, tools) -> Taken, the section read from its start (where the marker is).


def take_hermes(section: str, final: bool, tools) -> Taken:
    return _tagged(section, final, lambda text, start, complete: _hermes_body(text, start, complete, tools))


def take_qwen(section: str, final: bool, tools) -> Taken:
    return _tagged(section, final, lambda text, start, complete: _qwen_body(text, start, complete, tools))


def take_llama3(section: str, final: bool, tools) -> Taken:
    calls, used = [], 0
    i = _skip_space(section, 0)
    if section.startswith("<|python_tag|>", i):
        used = i = i + len("<|python_tag|>")
    while True:
        i = _skip_space(section, i)
        if calls and section.startswith((";", ","), i):   # between two calls (Llama's ';', the ',' of Phi-4-mini's template)
            i = _skip_space(section, i + 1)
        if i == len(section):
            return Taken(calls, used=used, pending=True)
        if section[i] != "{":
            return Taken(calls, used=used)
        try:
            read = _json_call(section, i, final, keys=("parameters", "arguments"))
        except NotACall:
            if calls:
                return Taken(calls, used=used)
            raise
        if read.call is None:
            return Taken(calls, open=read.open, used=used, pending=True)
        calls.append(read.call)
        used = i = read.end


_MISTRAL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _mistral_v11(section: str, i: int, final: bool) -> _Read:
    """`name[ARGS]{...}` or `name{...}` at i: the arguments stream once their '{' is in."""
    match = _MISTRAL_NAME.match(section, i)
    j = match.end() if match else i
    if section.startswith("[ARGS]", j):
        j += len("[ARGS]")
    elif "[ARGS]".startswith(section[j:]) and not final:
        return _Read()
    j = _skip_space(section, j)
    if j == len(section) and not final:
        return _Read()
    if match is None or j == len(section) or section[j] != "{":
        raise NotACall("[TOOL_CALLS] is not followed by a function name and its arguments")
    end = _value_end(section, j)
    if end is not None:
        return _Read(call=(match.group(0), section[j:end]), end=end)
    partial = (match.group(0), section[j:])
    return _Read(call=partial, end=len(section)) if final else _Read(open=partial)


def _call_list(section: str, i: int, final: bool, calls: list, keys=("arguments", "parameters")) -> tuple[_Read | None, int | None]:
    """A JSON list of call objects at i ('['; Mistral v0.3's, a forced reply's), each out as soon as it is
    complete: the open call and where the list ends (None while it is still open); complete calls are added to
    `calls`."""
    j, first = i + 1, True
    while True:
        j = _skip_space(section, j)
        if j == len(section):
            return None, (j if final else None)
        if section[j] == "]":
            return None, j + 1
        if section[j] == "," and not first:
            j = _skip_space(section, j + 1)
            if j == len(section):
                return None, (j if final else None)
        try:
            if section[j] != "{":
                raise NotACall("[TOOL_CALLS] is not followed by a list of calls")
            read = _json_call(section, j, final, keys)
        except NotACall:
            if first:
                raise
            return None, j   # the calls before stand; the list ends after them
        if read.call is None:
            return read, None
        calls.append(read.call)
        j, first = read.end, False


def take_mistral(section: str, final: bool, tools) -> Taken:
    calls, used = [], 0
    while True:
        i = _skip_space(section, used)
        if not section.startswith("[TOOL_CALLS]", i):
            return Taken(calls, used=used, pending="[TOOL_CALLS]".startswith(section[i:]))
        i = _skip_space(section, i + len("[TOOL_CALLS]"))
        if i == len(section) and not final:
            return Taken(calls, used=used, pending=True)
        try:
            if i < len(section) and section[i] == "[":
                read, end = _call_list(section, i, final, calls)
                if end is None:
                    return Taken(calls, open=read.open if read else None, used=used, pending=True)
            else:
                read = _mistral_v11(section, i, final)
                if read.call is None:
                    return Taken(calls, open=read.open, used=used, pending=True)
                calls.append(read.call)
                end = read.end
        except NotACall:
            if calls:
                return Taken(calls, used=used)
            raise
        used = end


FAMILIES = {
    "hermes": Family("hermes", ("<tool_call>",), take_hermes),
    "qwen": Family("qwen", ("<tool_call>",), take_qwen),
    "llama3": Family("llama3", ("<|python_tag|>",), take_llama3, leading=("{",), special_texts=("<|python_tag|>",)),
    "mistral": Family("mistral", ("[TOOL_CALLS]",), take_mistral, short_ids=True, special_texts=("[TOOL_CALLS]", "[ARGS]")),
}


def marker_tokens(tokenizer, family: Family) -> dict[int, str]:
    """The family's marker tokens (Mistral's [TOOL_CALLS], Llama's <|python_tag|>) that decoding must keep: id -> text."""
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text in family.special_texts}
    return {i: text for text, i in ids.items() if i is not None and i != tokenizer.unk_token_id}


class ToolFormatError(TunesmithError):
    """No parser reads the tool calls a template renders (and no --tool-parser was given)."""


_READS_BACK: dict[str, tuple[str | None, str | None]] = {}   # tool_source text -> (the family that reads its calls back, the reply)


def template_family(template, tokenizer, parser: str | None = None) -> Family:
    """The parser of a model's replies: `parser` (--tool-parser), else the family that reads back exactly the call
    the template renders (templates.probe_reply; the family its text names, `family_of`, is tried first). A
    template whose calls no family reads (DeepSeek-V3's <｜tool▁calls▁begin｜>) is a ToolFormatError, not replies
    whose calls come back as text. One that renders no call after its generation prompt (its reply rewritten,
    as DeepSeek-R1's thinking is, or the tools dropped from such a short probe) cannot be checked so: `family_of`."""
    if parser is not None:
        return FAMILIES[parser]
    source = tool_source(template, tokenizer)
    if source not in _READS_BACK:
        reply = probe_reply(template, tokenizer)
        wanted = [(PROBE_CALL["function"]["name"], PROBE_CALL["function"]["arguments"])]
        guess = family_of(source)
        order = [guess, *(name for name in FAMILIES if name != guess)]
        found = guess if reply is None else next((name for name in order if _calls(FAMILIES[name], reply, [PROBE_TOOL]) == wanted), None)
        _READS_BACK[source] = (found, reply)
    found, reply = _READS_BACK[source]
    if found is None:
        raise ToolFormatError(
            f"the template writes a tool call as {reply[:160]!r}, which none of the tool-call parsers "
            f"({', '.join(FAMILIES)}) reads back; choose one with --tool-parser"
        )
    return FAMILIES[found]


def _calls(family: Family, reply: str, tools: list[dict]) -> list[tuple[str, object]]:
    stream = ToolStream(family, tools)
    stream.add(reply)
    stream.finish()
    try:
        return [(c.name, json.loads(c.arguments)) for c in stream.calls]
    except json.JSONDecodeError:
        return []


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
    """Text deltas in, content and call deltas out. `done` turns true once max_calls calls are out.

    A call goes out as it is written: its id and name once its arguments have begun, then each new piece of
    the arguments. A section is read again from its start as text arrives (sections are a few hundred
    characters), and what was already handed out is skipped."""

    family: Family
    tools: list[dict]
    max_calls: int | None = None
    calls: list[Call] = field(default_factory=list)
    rejected: int = 0               # sections that began as calls but were no well-formed call: sent as content
    _text: str = ""                 # text not yet handed out (in a section: the section from its start)
    _in_calls: bool = False         # inside a tool-call section
    _started: bool = False          # a non-space character has arrived
    _out: int = 0                   # complete calls of this section handed out
    _layout: str = ""               # the space before the section: content again if it is no call
    _open: Call | None = None       # the call being handed out, its arguments so far

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
                    if stripped.startswith(self.family.leading):
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
                before = self._text[:at].rstrip()
                out += self._content(before)
                self._layout, self._text, self._in_calls = self._text[len(before) : at], self._text[at:], True
            try:
                taken = self.family.take(self._text, final, self.tools)
            except NotACall:
                out += self._content(self._layout + self._text)   # not a call after all: the model's text, as it is
                self._text, self._in_calls, self.rejected = "", False, self.rejected + 1
                return out
            for name, arguments in taken.calls[self._out :]:
                if not self.done:
                    out += self._call(name, arguments, complete=True)
            if taken.open is not None and not self.done:
                out += self._call(*taken.open, complete=False)
            if taken.pending and not final:
                return out
            self._text, self._out = self._text[taken.used :], 0
            if not self._text.strip():
                if final:
                    self._text = ""
                return out
            # Text after the calls: content again (and maybe more sections), without the layout before it.
            self._text, self._in_calls = self._text.lstrip(), False
        return out

    def _content(self, text: str) -> list:
        return [ContentDelta(text)] if text else []

    def _call(self, name: str, arguments: str, complete: bool) -> list:
        """The deltas that bring the call being written up to `arguments` (its header first, if not yet out)."""
        out = []
        if self._open is None:
            self._open = Call(name, "", self.family.new_id())
            out.append(CallDelta(len(self.calls), self._open.id, name))
        new = arguments[len(self._open.arguments) :]   # a reading continues the one before
        if new:
            out.append(CallDelta(len(self.calls), arguments=new))
        self._open.arguments = arguments
        if complete:
            self.calls.append(self._open)
            self._open, self._out = None, self._out + 1
        return out


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


def take_forced_list(section: str, final: bool, tools) -> Taken:
    """tool_choice required: the reply is a list of {"name", "parameters"} (forced_schema)."""
    i = _skip_space(section, 0)
    if i == len(section):
        if final:
            raise NotACall("an empty reply")
        return Taken(pending=True)
    calls = []
    read, end = _call_list(section, i, final, calls, keys=("parameters",))
    if end is None:
        return Taken(calls, open=read.open if read else None, pending=True)
    return Taken(calls, used=end)


def take_named(name: str, section: str, final: bool, tools) -> Taken:
    """A named tool_choice: the whole reply is the function's arguments, a call from its first character."""
    i = _skip_space(section, 0)
    if i == len(section) or section[i] != "{":
        if final or i < len(section):
            raise NotACall("the reply is not an arguments object")
        return Taken(pending=True)
    end = _value_end(section, i)
    if end is not None:
        return Taken([(name, section[i:end])], used=end)
    partial = (name, section[i:])
    return Taken([partial], used=len(section)) if final else Taken(open=partial, pending=True)


def forced_family(family: Family, named: str | None) -> Family:
    """How a reply decoded under forced_schema is read, streamed like any other: the named function's arguments,
    or the list of calls. Ids as the template's family makes them."""
    if named is not None:
        return Family(family.name, (), functools.partial(take_named, named), leading=("{",), short_ids=family.short_ids)
    return Family(family.name, (), take_forced_list, leading=("[",), short_ids=family.short_ids)
