"""Tool use in training data: a row's `tools`, the assistant's `tool_calls` and the `tool` results, each
checked against the others, and the built-in Hermes format for templates that do not render tools.

The rows take OpenAI's shapes (a `messages` row; ShareGPT's LLaMA-Factory turns map onto the same):

    {"tools": [{"type": "function", "function": {"name": "refund", "description": "...",
                "parameters": {"type": "object", "properties": {...}, "required": [...]}}}],
     "messages": [{"role": "user", "content": "Refund order A-1001, $20."},
                  {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "refund", "arguments": "{\\"order_id\\": \\"A-1001\\", \\"amount\\": 20}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "{\\"status\\": \\"refunded\\"}"},
                  {"role": "assistant", "content": "Done: $20 is on its way back."}]}

- `tools`: a list (or a JSON string of one, as LLaMA-Factory writes it) of functions, each OpenAI's
  {"type": "function", "function": {...}} or the bare {"name", "description", "parameters"}; `parameters`
  is a JSON schema. Names are unique.
- `tool_calls`: each {"id", "type": "function", "function": {"name", "arguments"}} (or the bare {"id", "name",
  "arguments"}); arguments are a JSON object or a string holding one. A call names one of the row's tools and
  its arguments validate against that tool's schema. Ids are optional and unique in a conversation.
  The assistant message's content may be empty or missing.
- `tool` messages follow the call they answer: `tool_call_id` names it, or, without one, they answer the
  calls in order. Every call gets its result before the conversation goes on, except in the last turn
  (a conversation may end on the call the model should make).
- ShareGPT: `function_call` turns hold {"name", "arguments"} (or a list of them) as JSON, `observation`
  turns hold one result each; `tools` is the row's column as above.

A bad row is a DataError naming the field (`messages[2].tool_calls[0].function.arguments`), dropped and
counted with `data.on_bad_row: drop` like any other.

Templates that render tools themselves (Llama 3.1+, Qwen2.5+, Mistral, Hermes) get the messages as
they are, with `tools=`. Any other template (SmolLM2, the built-in chatml and alpaca) gets the Hermes
format, the one Qwen2.5 and Hermes 2 Pro use, written into plain messages by HERMES_TOOLS (Jinja put
before the template's text): the tools in the system message inside <tools></tools>, each call as
<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call> in the reply, and results as a user turn
of <tool_response>\\n...\\n</tool_response> blocks.
"""

from __future__ import annotations

import json

from tunesmith.data.formats import DataError, type_name

HERMES_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


# The Hermes format written in Jinja, put before a template's own text (as MERGE_SYSTEM is): it rewrites the
# conversation into plain messages, so the saved tokenizer renders tool use as tunesmith does, for plain
# transformers users and other servers too. Without tools, calls or results it changes nothing.
HERMES_TOOLS = (
    "{%- if tools or messages | selectattr('tool_calls') | list or messages | selectattr('role', 'equalto', 'tool') | list -%}"
    "{%- set ns = namespace(out=[], results='', calls='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'tool' -%}"
    "{%- set ns.results = ns.results + ('\\n' if ns.results else '') + '<tool_response>\\n' + m['content'] + '\\n</tool_response>' -%}"
    "{%- else -%}"
    "{%- if ns.results -%}{%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results}] -%}{%- set ns.results = '' -%}{%- endif -%}"
    "{%- if m['tool_calls'] -%}"
    "{%- set ns.calls = '' -%}"
    "{%- for c in m['tool_calls'] -%}{%- set f = c['function'] if c['function'] is defined else c -%}"
    "{%- set ns.calls = ns.calls + ('\\n' if ns.calls else '') + '<tool_call>\\n' + {'name': f['name'], 'arguments': f['arguments']} | tojson"
    " + '\\n</tool_call>' -%}"
    "{%- endfor -%}"
    "{%- set ns.out = ns.out + [{'role': m['role'], 'content': (m['content'] + '\\n' if m['content'] else '') + ns.calls}] -%}"
    "{%- else -%}{%- set ns.out = ns.out + [m] -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.results -%}{%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results}] -%}{%- endif -%}"
    "{%- if tools -%}"
    "{%- set ns.listed = " + json.dumps(HERMES_TOOLS_HEAD) + " -%}"
    "{%- for t in tools -%}{%- set ns.listed = ns.listed + '\\n' + t | tojson -%}{%- endfor -%}"
    "{%- set ns.listed = ns.listed + " + json.dumps(HERMES_TOOLS_TAIL) + " -%}"
    "{%- if ns.out and ns.out[0]['role'] == 'system' -%}"
    "{%- set ns.out = [{'role': 'system', 'content': ns.out[0]['content'] + '\\n\\n' + ns.listed}] + ns.out[1:] -%}"
    "{%- else -%}{%- set ns.out = [{'role': 'system', 'content': ns.listed}] + ns.out -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- set messages = ns.out -%}{%- set tools = none -%}"
    "{%- endif -%}"
)


def parse_tools(value, key: str, where: str) -> list[dict]:
    """The row's tools as OpenAI function tools, {"type": "function", "function": {name, description?, parameters?, ...}}."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as err:
            raise DataError(where, key, f"not valid JSON: {err.msg} (column {err.colno})", "invalid_tools") from None
    if not isinstance(value, list):
        raise DataError(where, key, f"expected a list of tools, found {type_name(value)}", "invalid_tools")
    tools, names = [], set()
    for i, item in enumerate(value):
        path = f"{key}[{i}]"
        function, fpath = _function_part(item, path, where, "invalid_tools")
        name = _name(function, fpath, where, "invalid_tools")
        if name in names:
            raise DataError(where, f"{fpath}.name", f"tool {name!r} is defined twice", "invalid_tools")
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise DataError(where, f"{fpath}.description", f"expected a string, found {type_name(description)}", "invalid_tools")
        parameters = function.get("parameters")
        if parameters is not None:
            _check_schema(parameters, f"{fpath}.parameters", where)
            if parameters.get("type", "object") != "object":
                raise DataError(where, f"{fpath}.parameters.type", f"{json.dumps(parameters['type'])}: a call's arguments are an object, so "
                                "parameters must describe one (\"type\": \"object\")", "invalid_tools")
        # Kept as given (`strict` and all): templates write the tool as JSON, and a served request's tools must
        # render as the training rows' did.
        tools.append({"type": "function", "function": function})
    return tools


def parse_tool_calls(value, path: str, where: str) -> list[dict]:
    """An assistant message's calls as {"id"?, "type": "function", "function": {"name", "arguments": dict}}."""
    if not isinstance(value, list) or not value:
        found = "an empty list" if value == [] else type_name(value)
        raise DataError(where, path, f"expected a list of tool calls, found {found}", "invalid_tool_call")
    calls = []
    for i, item in enumerate(value):
        cpath = f"{path}[{i}]"
        function, fpath = _function_part(item, cpath, where, "invalid_tool_call")
        name = _name(function, fpath, where, "invalid_tool_call")
        if "arguments" not in function:
            raise DataError(where, f"{fpath}.arguments", "missing (a JSON object, {} for none)", "invalid_tool_arguments")
        call_id = item.get("id")
        if call_id is not None and (not isinstance(call_id, str) or not call_id):
            raise DataError(where, f"{cpath}.id", f"expected a non-empty string, found {type_name(call_id)}", "invalid_tool_call")
        arguments = parse_arguments(function["arguments"], f"{fpath}.arguments", where)
        calls.append({**({"id": call_id} if call_id else {}), "type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


def strict_json(text: str):
    """json.loads without Python's extensions: NaN and Infinity are no JSON (a template's tojson would write them
    back, and clients' JSON parsers refuse them). Shared by training data and the server."""

    def refuse(constant: str):
        raise json.JSONDecodeError(f"{constant} is not JSON", text, text.find(constant))

    return json.loads(text, parse_constant=refuse)


def parse_arguments(value, path: str, where: str) -> dict:
    """A call's arguments as an object: given as one, or as a string of JSON holding one."""
    if isinstance(value, str):
        try:
            value = strict_json(value)
        except json.JSONDecodeError as err:
            raise DataError(where, path, f"not valid JSON: {err.msg} (column {err.colno})", "invalid_tool_arguments") from None
    if not isinstance(value, dict):
        raise DataError(where, path, f"expected a JSON object of arguments, found {type_name(value)}", "invalid_tool_arguments")
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise DataError(where, path, "holds NaN or Infinity, which are no JSON", "invalid_tool_arguments") from None
    return value


def sharegpt_calls(value, path: str, where: str) -> list[dict]:
    """LLaMA-Factory's function_call turn: JSON of {"name", "arguments"} or of a list of them."""
    try:
        parsed = strict_json(value)
    except json.JSONDecodeError as err:
        raise DataError(where, path, f"not valid JSON: {err.msg} (column {err.colno})", "invalid_tool_call") from None
    return parse_tool_calls(parsed if isinstance(parsed, list) else [parsed], path, where)


def check_calls(messages: list[dict], paths: list[str], tools: list[dict], tools_key: str, where: str) -> None:
    """Every call names one of the row's tools, with arguments its schema accepts, and no call id is used twice."""
    from jsonschema import Draft202012Validator, validators

    by_name = {t["function"]["name"]: t["function"] for t in tools}
    ids = set()
    for message, path in zip(messages, paths):
        for i, call in enumerate(message.get("tool_calls", ())):
            cpath = f"{path}.tool_calls[{i}]"
            name = call["function"]["name"]
            if name not in by_name:
                known = ", ".join(by_name) or f"none: the row has no {tools_key}"
                raise DataError(where, f"{cpath}.function.name", f"unknown tool {name!r}; the row's tools: {known}", "unknown_tool")
            if call.get("id") in ids:
                raise DataError(where, f"{cpath}.id", f"call id {call['id']!r} is used twice in this conversation", "duplicate_tool_call_id")
            ids.add(call.get("id"))
            ids.discard(None)
            schema = by_name[name].get("parameters")
            if schema is None:
                continue
            validator = validators.validator_for(schema, default=Draft202012Validator)(schema)
            error = next(iter(sorted(validator.iter_errors(call["function"]["arguments"]), key=lambda e: list(e.path))), None)
            if error is not None:
                at = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.path)
                raise DataError(where, f"{cpath}.function.arguments{at}", f"does not match the parameters of tool {name}: {error.message}",
                                "tool_arguments_mismatch")


def link_results(messages: list[dict], paths: list[str], where: str) -> None:
    """Give each tool message the id and name of the call it answers; a result without its call, or a call left
    without a result before the conversation goes on, is an error."""
    pending: list[dict] = []
    for k, (message, path) in enumerate(zip(messages, paths)):
        if message["role"] == "tool":
            if not pending:
                raise DataError(where, path, "a tool message without a matching call (every call already has its result)", "unmatched_tool_result")
            wanted = message.get("tool_call_id")
            call = next((c for c in pending if c.get("id") == wanted), None) if wanted else pending[0]
            if call is None:
                open_ids = ", ".join(repr(c.get("id")) for c in pending)
                raise DataError(where, f"{path}.tool_call_id", f"{wanted!r} matches no call awaiting a result (awaiting: {open_ids})",
                                "unmatched_tool_result")
            name = message.get("name")
            if name is not None and name != call["function"]["name"]:
                raise DataError(where, f"{path}.name", f"{name!r}, but call {wanted or ''} is to {call['function']['name']!r}",
                                "unmatched_tool_result")
            pending.remove(call)
            message["name"] = call["function"]["name"]
            if call.get("id"):
                message["tool_call_id"] = call["id"]
            continue
        if pending and k > 0 and messages[k - 1]["role"] == "tool":
            missing = ", ".join(c.get("id") or c["function"]["name"] for c in pending)
            raise DataError(where, path, f"the tool calls {missing} have no result before this message", "unanswered_tool_call")
        pending = list(message.get("tool_calls", ()))


def uses_tools(messages: list[dict], tools: list[dict] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def call_json(call: dict) -> str:
    """A call as the Hermes format writes it, {"name": ..., "arguments": {...}}: how eval shows a reference call."""
    function = call.get("function", call)
    return json.dumps({"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False)


def _function_part(item, path: str, where: str, reason: str) -> tuple[dict, str]:
    """The function of a tool or a call, in OpenAI's nested shape or the bare one, and its path."""
    if not isinstance(item, dict):
        raise DataError(where, path, f"expected an object, found {type_name(item)}", reason)
    if "function" not in item:
        return item, path
    kind = item.get("type", "function")
    if kind != "function":
        raise DataError(where, f"{path}.type", f"{kind!r}: only function tools are supported", reason)
    if not isinstance(item["function"], dict):
        raise DataError(where, f"{path}.function", f"expected an object, found {type_name(item['function'])}", reason)
    return item["function"], f"{path}.function"


def _name(function: dict, path: str, where: str, reason: str) -> str:
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(where, f"{path}.name", "missing" if name is None else f"expected a function name, found {type_name(name)}", reason)
    return name


def schema_problem(schema: dict) -> tuple[str, str] | None:
    """Why `schema` is not a valid JSON schema (by its own $schema's metaschema, else 2020-12): where inside it
    (".properties.a.type") and what is wrong; None when it is valid. Shared by training data and the server."""
    from jsonschema import Draft202012Validator, SchemaError, validators

    try:
        validators.validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as err:
        return "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in err.path), err.message
    return None


def _check_schema(schema, path: str, where: str) -> None:
    if not isinstance(schema, dict):
        raise DataError(where, path, f"expected a JSON schema object, found {type_name(schema)}", "invalid_tools")
    problem = schema_problem(schema)
    if problem is not None:
        raise DataError(where, path + problem[0], f"not a valid JSON schema: {problem[1]}", "invalid_tools")
