"""What a chat request asks of its reply beyond text, decided once per request (`plan`), and each choice's text
turned into OpenAI's message and chunk deltas (`Choice`): content, tool calls, logprobs.

tool_choice:
    auto (the default with tools)   the tools go into the prompt; the reply is parsed by the template family's parser
    none                            no tools in the prompt, the reply is text (what OpenAI promises for none)
    required / a named function     the tools go into the prompt and the reply is decoded under a JSON schema
                                    (tools.forced_schema), so it is always a well-formed call of a real tool
response_format json_object / json_schema: the reply is decoded under that schema (structured.py, or vLLM's); on
/v1/completions too (`text_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.serve.protocol import APIError, ChatRequest, NamedToolChoice, Structured
from tunesmith.serve.tools import FAMILIES, ContentDelta, Family, ToolFormatError, ToolStream, forced_family, forced_schema


@dataclass
class Plan:
    tools: list[dict] | None        # what the template is given (None: no tools in the prompt)
    family: Family | None           # the parser of an `auto` reply
    schema: dict | None = None      # the reply is decoded under this schema ...
    json_reply: bool = False        # ... or, when this is true and schema is None, as any JSON object
    forced: bool = False            # the reply is a forced call (tool_choice required or named)
    named: str | None = None        # the named function of tool_choice {"type": "function", ...}
    max_calls: int | None = None    # parallel_tool_calls false: 1
    param: str = "response_format"  # which field a schema error is about

    @property
    def constrained(self) -> bool:
        return self.schema is not None or self.json_reply


def plan(body: ChatRequest, family: Family | ToolFormatError | None) -> Plan:
    """`family`: the parser of the model's replies (tools.template_family), or why there is none; None when the
    request offers no tools. A forced call is decoded under a schema, so it needs no parser (the family then
    only makes call ids); `auto` does."""
    if not body.calls_tools():
        return text_plan(body)
    tools = [t.model_dump(exclude_none=True) for t in body.tools]
    if isinstance(family, ToolFormatError):
        if body.tool_choice in (None, "auto"):
            raise APIError(400, f"{family} (or send tool_choice 'required' or a named function: a forced call is decoded under a schema)", param="tools")
        family = FAMILIES["hermes"]
    max_calls = 1 if body.parallel_tool_calls is False else None
    if body.tool_choice in (None, "auto"):
        return Plan(tools, family, max_calls=max_calls)
    named = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
    schema = forced_schema(tools, named, parallel=max_calls is None)
    return Plan(tools, family, schema=schema, json_reply=True, forced=True, named=named, max_calls=max_calls, param="tools")


def text_plan(body: Structured) -> Plan:
    """A reply without tools: free text, or decoded under response_format (chat and completions alike)."""
    if body.response_format is not None and body.response_format.type == "json_schema":
        return Plan(None, None, schema=body.response_format.json_schema.schema_, json_reply=True)
    return Plan(None, None, json_reply=body.json_reply())


@dataclass
class Choice:
    """One choice of a chat reply, fed its text deltas; `done` when it must stop (its one allowed call is out)."""

    plan: Plan
    tokenizer: object
    logprobs: int | None            # None: no logprobs; n: top n alternatives per token
    calls: list = field(default_factory=list)
    content: str = ""
    tokens: list = field(default_factory=list)   # engine.TokenLogprob of every token, for the whole reply
    _stream: ToolStream | None = None

    def __post_init__(self):
        if self.plan.family is not None:
            family = forced_family(self.plan.family, self.plan.named) if self.plan.forced else self.plan.family
            self._stream = ToolStream(family, self.plan.tools, self.plan.max_calls)

    @property
    def done(self) -> bool:
        return self._stream is not None and self._stream.done

    def add(self, text: str, scores: list) -> list[dict]:
        """Chunk deltas for new text (and the logprobs of the tokens behind it, put on the first delta)."""
        if self._stream is not None:
            pieces = self._stream.add(text)
        else:
            pieces = [ContentDelta(text)] if text else []
        return self._deltas(pieces, scores)

    def finish(self, reason: str) -> tuple[list[dict], str]:
        """The last deltas and the finish reason (tool_calls when the reply ended in calls)."""
        deltas = self._deltas(self._stream.finish() if self._stream is not None else [], [])
        if self.calls and reason == "stop":
            reason = "tool_calls"
        return deltas, reason

    def _deltas(self, pieces: list, scores: list) -> list[dict]:
        self.tokens += scores
        out = []
        for piece in pieces:
            if isinstance(piece, ContentDelta):
                self.content += piece.text
                out.append({"content": piece.text})
            else:
                if piece.id is not None:
                    self.calls.append({"id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": ""}})
                self.calls[piece.index]["function"]["arguments"] += piece.arguments
                out.append({"tool_calls": [piece.as_dict()]})
        if scores and self.logprobs is not None:
            if not out:
                out.append({})   # logprobs travel even while the text is held back
            out[0]["logprobs"] = {"content": [chat_logprob(self.tokenizer, s) for s in scores], "refusal": None}
        return out

    def message(self) -> dict:
        message = {"role": "assistant", "content": self.content if self.content or not self.calls else None}
        if self.calls:
            message["tool_calls"] = self.calls
        return message

    def logprobs_body(self) -> dict | None:
        if self.logprobs is None:
            return None
        return {"content": [chat_logprob(self.tokenizer, s) for s in self.tokens], "refusal": None}


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprob(tokenizer, score) -> dict:
    """One token's entry in OpenAI's chat logprobs."""

    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {**entry(score.token_id, score.logprob), "top_logprobs": [entry(t, lp) for t, lp in score.top]}


def completion_logprobs(tokenizer, scores: list, offset: int = 0) -> dict:
    """OpenAI's completions logprobs: tokens, their logprobs, the top alternatives and where each token starts."""
    tokens = [token_text(tokenizer, s.token_id) for s in scores]
    starts, at = [], offset
    for text in tokens:
        starts.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in s.top} for s in scores],
        "text_offset": starts,
    }
