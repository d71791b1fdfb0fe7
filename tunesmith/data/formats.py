"""Training-data formats: recognise a row's format and turn it into a normalised `Example`.

Every format but `text` becomes a conversation: a list of {"role", "content"} messages with roles
system, user and assistant. Field names are canonical; `data.columns` maps them to your column
names, e.g. {prompt: ticket, completion: category}. Required fields are marked with *.

| format            | fields                                      | becomes                                          |
|-------------------|---------------------------------------------|--------------------------------------------------|
| alpaca            | instruction*, input, output*, system,       | [system] + (user, assistant) per history pair +  |
|                   | history ([[instruction, output], ...])      | user: instruction + "\\n\\n" + input, assistant: output |
| messages          | messages*: [{role, content, reasoning,      | the messages (OpenAI style)                      |
|                   | tool_calls, tool_call_id}, ...], tools      |                                                  |
| sharegpt          | conversations*: [{from, value}, ...],       | from human/user -> user, gpt/assistant ->        |
|                   | system, tools                               | assistant, system -> system, function_call ->    |
|                   |                                             | assistant tool calls, observation -> tool        |
| prompt_completion | prompt*, completion*: both strings, or both | user: prompt, assistant: completion; or prompt   |
|                   | lists of messages (TRL conversational),     | messages + completion messages (assistant only)  |
|                   | tools                                       |                                                  |
| question_answer   | question*, answer*                          | user: question, assistant: answer                |
| text              | text*                                       | plain text for language modelling (no messages)  |

A conversation may start with one system message, then alternates user and assistant turns and
ends with an assistant turn; user messages and assistant replies may not be empty. Content is kept
exactly as given.

Tool use (tunesmith.data.tools): a row's `tools` lists the functions the model may call; an assistant
message may carry `tool_calls` (its content may then be empty) and the `tool` messages after it hold
the results, before the next assistant turn. Calls are checked against the row's tools (name, JSON
arguments matching the schema) and results against the calls.

An assistant message (messages, and prompt_completion message lists) may carry its reasoning, the
thinking before the reply, in an optional `reasoning` field. It reaches the template as
`reasoning_content`, which Qwen3-style templates render as <think>...</think>; a template that does
not render it is reported by the data checks (tunesmith.data.masks), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from tunesmith.errors import TunesmithError

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "question_answer", "text")
ROLES = ("system", "user", "assistant")

# Auto-detection tries formats in FORMATS order and takes the first whose required fields are
# all present, so `text` (often an extra, pre-rendered column next to real fields) comes last.
REQUIRED = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "question_answer": ("question", "answer"),
    "text": ("text",),
    # The alignment formats (tunesmith.data.preference); a method detects only among the formats it reads.
    "unpaired": ("prompt", "completion", "label"),
    "preference": ("chosen", "rejected"),
    "prompt": ("prompt",),
}
OPTIONAL = {
    "alpaca": ("input", "system", "history"),
    "messages": ("tools",),
    "sharegpt": ("system", "tools"),
    "prompt_completion": ("tools",),
    "preference": ("prompt",),
}
FIELDS = tuple(dict.fromkeys(f for fmt in REQUIRED for f in REQUIRED[fmt] + OPTIONAL.get(fmt, ())))

MESSAGE_ROLES = {role: role for role in ROLES}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# The SFT formats also read tool use (tunesmith.data.tools); ShareGPT's tool turns are LLaMA-Factory's.
TOOL_MESSAGE_ROLES = {**MESSAGE_ROLES, "tool": "tool"}
TOOL_SHAREGPT_ROLES = {**SHAREGPT_ROLES, "function_call": "assistant", "observation": "tool"}

# Rows come from JSON, CSV or Arrow: name their types the way a JSON file would.
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


class DataError(TunesmithError, ValueError):
    """A bad row: str(err) reads 'FILE:LINE: FIELD: problem'."""

    def __init__(self, where: str, field: str | None, problem: str, reason: str, hint: str | None = None):
        self.where = where      # 'train.jsonl:12'
        self.field = field      # 'messages[2].role', or None when the whole row is at fault
        self.problem = problem
        self.reason = reason    # short stable tag, the key of the drop counts
        self.hint = hint
        message = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))

    def __reduce__(self):
        # Exceptions pickle their args; ours has a different signature (datasets' workers pickle errors).
        return type(self), (self.where, self.field, self.problem, self.reason, self.hint)


@dataclass
class Example:
    messages: list[dict] | None             # [{"role": "system"|"user"|"assistant"|"tool", "content": str, "reasoning"?: str,
                                            #   "tool_calls"?: [...], "tool_call_id"?: str, "name"?: str}, ...]
    text: str | None                        # only for the plain "text" format
    where: str                              # 'train.jsonl:12', for error messages later
    trained_from: int = 0                   # assistant turns before this message index are context, not trained
    tools: list[dict] | None = None         # the functions the model may call, OpenAI style (tunesmith.data.tools)


def type_name(value) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """The messages with `system` as their first, system message, unless they start with one (or it is empty)."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def detect_format(row: dict, columns: dict[str, str], where: str, formats: tuple[str, ...] = FORMATS) -> str:
    """The first of `formats` whose required fields are all present (null values count as absent)."""
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
    present = {key for key, value in row.items() if value is not None}
    for fmt in formats:
        if all(columns.get(name, name) in present for name in REQUIRED[fmt]):
            return fmt
    needs = "; ".join(f"{fmt}: {', '.join(columns.get(n, n) for n in REQUIRED[fmt])}" for fmt in formats)
    raise DataError(
        where,
        None,
        f"cannot tell the format from the keys [{', '.join(row)}]; each format needs: {needs} "
        "(map your column names with data.columns, or set data.format)",
        "unknown_format",
    )


def to_example(
    row: dict, fmt: str, columns: dict[str, str], where: str, system_prompt: str | None = None
) -> Example:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
    columns = columns or {}
    if fmt == "text":
        key, text = required_field(row, "text", columns, where)
        expect_string(text, key, where)
        if not text.strip():
            raise DataError(where, key, "empty text", "empty_content")
        return Example(messages=None, text=text, where=where)

    turns, container = CONVERTERS[fmt](row, columns, where)
    check_turns(turns, container, where)
    tools, turns = _tools(row, fmt, turns, columns, where)
    messages = with_system([as_message(turn) for turn in turns], system_prompt)
    trained_from = 0
    if fmt == "prompt_completion":
        # Like TRL: only the completion is trained, even when the prompt holds earlier assistant turns.
        completion = row[columns.get("completion", "completion")]
        cut = len(messages) - (len(completion) if isinstance(completion, list) else 1)
        if any(m["role"] == "assistant" for m in messages[:cut]):
            trained_from = cut
    return Example(messages=messages, text=None, where=where, trained_from=trained_from, tools=tools)


def _tools(row: dict, fmt: str, turns: list[Turn], columns: dict[str, str], where: str) -> tuple[list[dict] | None, list[Turn]]:
    """The row's tools, and the turns with every call checked against them and every result linked to its call."""
    from tunesmith.data import tools  # it builds on this module's DataError

    key = columns.get("tools", "tools")
    value = row.get(key) if "tools" in OPTIONAL.get(fmt, ()) else None
    parsed = tools.parse_tools(value, key, where) if value is not None else []
    messages = [{"role": t.role, **t.extra} for t in turns]
    paths = [t.role_path.rpartition(".")[0] for t in turns]
    tools.check_calls(messages, paths, parsed, key, where)
    tools.link_results(messages, paths, where)
    linked = [turn._replace(extra={k: v for k, v in message.items() if k != "role"}) for turn, message in zip(turns, messages)]
    return parsed or None, linked


class Turn(NamedTuple):
    role: str
    content: str
    role_path: str          # the paths name the user's fields in errors
    content_path: str
    reasoning: str = ""     # an assistant message's optional `reasoning` field
    extra: dict = {}        # tool use: an assistant's tool_calls, a tool message's tool_call_id and name (filled by _tools)


def as_message(turn: Turn) -> dict:
    return {"role": turn.role, "content": turn.content, **({"reasoning": turn.reasoning} if turn.reasoning else {}), **turn.extra}


def _alpaca(row: dict, columns: dict[str, str], where: str) -> tuple[list[Turn], str]:
    ikey, instruction = required_field(row, "instruction", columns, where)
    okey, output = required_field(row, "output", columns, where)
    expect_string(instruction, ikey, where)
    expect_string(output, okey, where)
    nkey, extra = _optional_string(row, "input", columns, where)
    skey, system = _optional_string(row, "system", columns, where)
    hkey = columns.get("history", "history")
    history = row.get(hkey)

    turns: list[Turn] = [Turn("system", system, skey, skey)] if system else []
    if history is not None:
        if not isinstance(history, list):
            raise DataError(where, hkey, f"expected a list of [instruction, output] pairs, found {type_name(history)}", "wrong_type")
        for i, pair in enumerate(history):
            path = f"{hkey}[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                found = f"a list of {len(pair)}" if isinstance(pair, list) else type_name(pair)
                raise DataError(where, path, f"expected an [instruction, output] pair, found {found}", "wrong_type")
            for j, role in enumerate(("user", "assistant")):
                expect_string(pair[j], f"{path}[{j}]", where)
                turns.append(Turn(role, pair[j], f"{path}[{j}]", f"{path}[{j}]"))
    user = instruction + "\n\n" + extra if extra else instruction
    turns += [Turn("user", user, ikey, ikey), Turn("assistant", output, okey, okey)]
    return turns, okey


def _messages(row: dict, columns: dict[str, str], where: str) -> tuple[list[Turn], str]:
    key, items = required_field(row, "messages", columns, where)
    return parse_turns(items, key, ("role", "content"), TOOL_MESSAGE_ROLES, where), key


def _sharegpt(row: dict, columns: dict[str, str], where: str) -> tuple[list[Turn], str]:
    key, items = required_field(row, "conversations", columns, where)
    turns = parse_turns(items, key, ("from", "value"), TOOL_SHAREGPT_ROLES, where)
    skey, system = _optional_string(row, "system", columns, where)
    return ([Turn("system", system, skey, skey)] if system else []) + turns, key


def _prompt_completion(row: dict, columns: dict[str, str], where: str) -> tuple[list[Turn], str]:
    pkey, prompt = required_field(row, "prompt", columns, where)
    ckey, completion = required_field(row, "completion", columns, where)
    for key, value in ((pkey, prompt), (ckey, completion)):
        if not isinstance(value, (str, list)):
            raise DataError(where, key, f"expected a string or a list of messages, found {type_name(value)}", "wrong_type")
    if type(prompt) is not type(completion):
        raise DataError(
            where, ckey, f"expected {type_name(prompt)} like {pkey}, found {type_name(completion)}", "wrong_type"
        )
    if isinstance(prompt, str):
        return [Turn("user", prompt, pkey, pkey), Turn("assistant", completion, ckey, ckey)], ckey

    prompt_turns = parse_turns(prompt, pkey, ("role", "content"), TOOL_MESSAGE_ROLES, where)
    completion_turns = parse_turns(completion, ckey, ("role", "content"), TOOL_MESSAGE_ROLES, where)
    for role, _, role_path, *_ in completion_turns:
        if role != "assistant":
            raise DataError(where, role_path, f"completion messages must be assistant turns, found {role}", "bad_turn_order")
    return prompt_turns + completion_turns, ckey


def _question_answer(row: dict, columns: dict[str, str], where: str) -> tuple[list[Turn], str]:
    qkey, question = required_field(row, "question", columns, where)
    akey, answer = required_field(row, "answer", columns, where)
    expect_string(question, qkey, where)
    expect_string(answer, akey, where)
    return [Turn("user", question, qkey, qkey), Turn("assistant", answer, akey, akey)], akey


CONVERTERS = {
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "question_answer": _question_answer,
}


def required_field(row: dict, name: str, columns: dict[str, str], where: str) -> tuple[str, object]:
    key = columns.get(name, name)
    if key not in row:
        raise DataError(where, key, f"missing (the row has: {', '.join(row) or 'no keys'})", "missing_field")
    return key, row[key]


def _optional_string(row: dict, name: str, columns: dict[str, str], where: str) -> tuple[str, str]:
    """An optional text field; absent, null, empty and whitespace-only (empty CSV cells) all mean none."""
    key = columns.get(name, name)
    value = row.get(key)
    if value is None:
        return key, ""
    expect_string(value, key, where)
    return key, value if value.strip() else ""


def expect_string(value, path: str, where: str) -> None:
    if not isinstance(value, str):
        raise DataError(where, path, f"expected a string, found {type_name(value)}", "wrong_type")


def parse_turns(items, path: str, keys: tuple[str, str], roles: dict[str, str], where: str) -> list[Turn]:
    from tunesmith.data import tools  # it builds on this module's DataError

    role_key, content_key = keys
    if not isinstance(items, list):
        raise DataError(where, path, f"expected a list of messages, found {type_name(items)}", "wrong_type")
    turns = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        if not isinstance(item, dict):
            problem = f"expected an object with {role_key} and {content_key}, found {type_name(item)}"
            raise DataError(where, item_path, problem, "wrong_type")
        # Exports of API logs write `tool_calls: []` or null on every message: no calls.
        calls = None if item.get("tool_calls") in (None, []) else item["tool_calls"]
        for key in keys:
            # A message that calls tools may leave its content out (OpenAI sends null).
            if key == content_key and calls is not None and item.get(key) is None:
                continue
            if key not in item:
                problem = f"missing (the message has: {', '.join(item) or 'no keys'})"
                if key == "from" and "role" in item:
                    problem += f"; for role/content messages set data.format: messages and data.columns: {{messages: {path}}}"
                raise DataError(where, f"{item_path}.{key}", problem, "missing_field")
        role, content = item[role_key], item.get(content_key)
        expect_string(role, f"{item_path}.{role_key}", where)
        if role not in roles:
            raise DataError(where, f"{item_path}.{role_key}", f"unknown role {role!r}; allowed: {', '.join(roles)}", "unknown_role")
        content = "" if content is None and calls is not None else content
        expect_string(content, f"{item_path}.{content_key}", where)
        extra = {}
        if calls is not None or item.get("tool_call_id") is not None:
            if "tool" not in roles.values():
                field = "tool_calls" if calls is not None else "tool_call_id"
                raise DataError(where, f"{item_path}.{field}", "tool use is read in the SFT formats (messages, sharegpt, prompt_completion) only", "wrong_type")
            if calls is not None and roles[role] != "assistant":
                raise DataError(where, f"{item_path}.tool_calls", f"only assistant messages call tools, this one is {roles[role]}", "invalid_tool_call")
        if calls is not None:
            extra["tool_calls"] = tools.parse_tool_calls(calls, f"{item_path}.tool_calls", where)
        elif role == "function_call":
            extra["tool_calls"] = tools.sharegpt_calls(content, f"{item_path}.{content_key}", where)
            content = ""
        if roles[role] == "tool":
            for field in ("tool_call_id", "name"):
                if item.get(field) is not None:
                    expect_string(item[field], f"{item_path}.{field}", where)
                    extra[field] = item[field]
        reasoning = item.get("reasoning")
        if reasoning is not None:
            expect_string(reasoning, f"{item_path}.reasoning", where)
            if roles[role] != "assistant":
                raise DataError(where, f"{item_path}.reasoning", f"only assistant messages carry reasoning, this one is {roles[role]}", "wrong_type")
        turns.append(Turn(roles[role], content, f"{item_path}.{role_key}", f"{item_path}.{content_key}", reasoning or "", extra))
    return turns


def check_not_empty(turn: Turn, where: str) -> None:
    """A user message or an assistant reply holds text (an empty system message just means none, a tool
    result may be empty, and a reply that calls tools may have no text)."""
    if turn.role not in ("system", "tool") and not turn.extra.get("tool_calls") and not turn.content.strip():
        problem = "empty assistant reply" if turn.role == "assistant" else "empty user message"
        raise DataError(where, turn.content_path, problem, "empty_content")


def check_turns(turns: list[Turn], container: str, where: str) -> None:
    """Optional system first, then user/assistant alternating, ending on a non-empty assistant reply; an
    assistant turn that calls tools is followed by their results (tool messages), then the assistant again."""
    previous, calling = None, False
    for i, turn in enumerate(turns):
        role, role_path = turn.role, turn.role_path
        if role == "system":
            if i > 0:
                raise DataError(where, role_path, "a system message is allowed only as the first message", "bad_turn_order")
            continue
        if role == "tool":
            if not calling:
                raise DataError(where, role_path, "a tool message without a matching call: it must follow an assistant message "
                                "with tool_calls", "unmatched_tool_result")
            previous = role
            continue
        expected = "assistant" if previous in ("user", "tool") else "user"
        if role != expected:
            if previous == "tool":
                raise DataError(where, role_path, f"after tool results the assistant answers, found {role}", "bad_turn_order")
            if calling:
                problem = "the tool calls before this message have no result: give a tool message for each"
                raise DataError(where, role_path, problem, "unanswered_tool_call")
            problem = f"two {role} turns in a row" if role == previous else f"the conversation must start with a user turn, found {role}"
            raise DataError(where, role_path, problem, "bad_turn_order")
        check_not_empty(turn, where)
        previous, calling = role, bool(turn.extra.get("tool_calls"))
    if not any(role == "assistant" for role, *_ in turns):
        raise DataError(where, container, "no assistant turn to train on", "no_assistant_turn")
    if previous != "assistant":
        raise DataError(where, turns[-1][2], f"the last turn must be from the assistant, found {previous}", "bad_turn_order")
