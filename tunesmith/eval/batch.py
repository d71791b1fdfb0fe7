"""Batch generation from a JSONL file: `tunesmith generate TARGET --input prompts.jsonl --output out.jsonl`.

Each input row holds a "prompt" string or a "messages" list (and optionally an "id" or any other keys);
a "tools" list (OpenAI style, tunesmith.data.tools) is given to the model with the row's prompt. Each
output row is the input row plus "output"; a row with tools also gets "tool_calls", the calls the server would
return for that output ({"name", "arguments"}; the output keeps the template family's call markers, such as
Mistral's [TOOL_CALLS], that decoding otherwise drops as special tokens). Rows keep their order.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.data.formats import DataError, type_name
from tunesmith.data.tools import parse_tools
from tunesmith.eval.engines import Decoding
from tunesmith.eval.generate import require_conversation
from tunesmith.eval.tool_calls import read_reply, tool_family


def read_prompt_rows(path: str | Path, system: str | None) -> tuple[list[dict], list[list[dict]], list[list[dict] | None]]:
    """The rows, their conversations and their tools; a row without a usable prompt is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows, conversations, tools = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(where, None, f"not valid JSON: {err.msg}", "bad_json") from None
        if not isinstance(row, dict):
            raise DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
        conversations.append(row_conversation(row, where, system))
        tools.append(parse_tools(row["tools"], "tools", where) if row.get("tools") is not None else None)
        rows.append(row)
    if not rows:
        raise DataError(str(path), None, "no rows", "empty_file")
    return rows, conversations, tools


def row_conversation(row: dict, where: str, system: str | None) -> list[dict]:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise DataError(where, "messages", "expected a non-empty list of {role, content} objects", "wrong_type")
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return messages
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        found = "missing" if "prompt" not in row else f"found {type_name(prompt)}" if not isinstance(prompt, str) else "empty"
        raise DataError(where, "prompt", f"expected a non-empty string or a 'messages' list ({found})", "missing_field")
    return require_conversation(prompt, system)


def generate_file(engine, input_path: str, output_path: str, decoding: Decoding, batch_size: int, system: str | None) -> int:
    """Generate for every row of `input_path`, write `output_path`; returns the number of rows."""
    rows, conversations, tools = read_prompt_rows(input_path, system if system is not None else engine.system_prompt)
    family = tool_family(engine.template, engine.tokenizer) if any(tools) else None  # the parser serve would use
    completions = engine.complete(conversations, decoding, batch_size=batch_size, progress=True, tools=tools, family=family)
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, row_tools, completion in zip(rows, tools, completions):
            written = {**row, "output": completion.text}
            if row_tools is not None:
                written["tool_calls"] = read_reply(completion.text, family, row_tools).calls
            f.write(json.dumps(written, ensure_ascii=False) + "\n")
    return len(rows)
