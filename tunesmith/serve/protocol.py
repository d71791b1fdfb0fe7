"""Request bodies of the OpenAI-compatible API, and its error shape.

Fields follow OpenAI's chat and completions APIs, typed as strictly as OpenAI types them: `"stream": "yes"`,
`"max_tokens": "10"` or `1.0` are 422s naming the field (a whole number for a float field is fine). Nothing is
accepted and then ignored:
- every field that changes the output is implemented (tools, response_format, logprobs, and vLLM's `top_k`,
  `min_p` and `repetition_penalty`),
- fields this server does not implement (logit_bias, echo, best_of, ...) are accepted only with the value that
  means "off", so clients that send their defaults work,
- metadata that changes no output (`user`, `metadata`, `store`, ...) is accepted,
- any other field is a 422.
Ranges are checked here, at the edge, so no request reaches the engine with values it cannot decode with.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Below this, logits / temperature overflows float32 for ordinary logits (vLLM clamps to the same minimum).
MIN_TEMPERATURE = 0.01
MAX_TOP_LOGPROBS = 20   # vLLM's default limit (OpenAI's: 20 for chat, 5 for completions)


class APIError(Exception):
    """Raised anywhere in a request; answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def only_off(*off):
    """A field this server does not implement: accepted only with a value meaning "off" (bool and int kept apart)."""

    def check(value):
        if not any(value == o and type(value) is type(o) for o in off):
            shown = " or ".join("null" if o is None else repr(o).lower() if isinstance(o, bool) else repr(o) for o in off)
            raise ValueError(f"not supported by this server (only {shown})")
        return value

    return AfterValidator(check)


def _sane_temperature(value: float) -> float:
    if 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    return value


Temperature = Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(_sane_temperature)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # 64-bit signed, as OpenAI and vLLM take it


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class CalledFunction(_Body):
    name: str = Field(min_length=1)
    arguments: str   # JSON text, as OpenAI sends it

    @field_validator("arguments", mode="before")
    @classmethod
    def _text(cls, value):
        if isinstance(value, dict):   # what templates take, but not what OpenAI's API takes (nor sends back)
            raise ValueError("must be the JSON text of the arguments object (a string, as OpenAI sends it), not an object: send json.dumps(arguments)")
        return value

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        from tunesmith.data.tools import strict_json

        try:
            parsed = strict_json(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON ({err.msg} at character {err.pos})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return value


class ToolCall(_Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None   # may be null only for an assistant message with tool_calls
    tool_calls: list[ToolCall] | None = None       # assistant
    tool_call_id: str | None = None                # tool: which call this is the result of
    # Echoed back by clients that resend a previous reply: fine while empty.
    name: Annotated[str | None, only_off(None)] = None
    refusal: Annotated[str | None, only_off(None)] = None
    function_call: Annotated[dict | None, only_off(None)] = None
    audio: Annotated[dict | None, only_off(None)] = None
    annotations: Annotated[list | None, only_off(None, [])] = None

    @model_validator(mode="after")
    def _fits_role(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages carry tool calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool_call_id: required in tool messages, and only there")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (null only for an assistant message with tool_calls)")
        return self

    def as_dict(self) -> dict:
        """The message as templates read it: text content, tool calls with their arguments as objects (what
        Llama-3.1, Qwen2.5, Mistral and Hermes templates write with `tojson`)."""
        content = "".join(part.text for part in self.content) if isinstance(self.content, list) else self.content or ""
        out = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def conversation(messages: list[Message]) -> list[dict]:
    """The messages as templates read them (Message.as_dict), each tool result named after the call it answers:
    OpenAI clients send only the call's id, training rows get the name too (data.tools.link_results), and
    templates that write it (Hermes-2-Pro's {"name": ..., "content": ...}) must see the prompt they trained on."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        names.update({c.id: c.function.name for c in message.tool_calls or []})
        out.append(message.as_dict())
        if message.tool_call_id in names:
            out[-1]["name"] = names[message.tool_call_id]
    return out


def _valid_schema(schema: dict) -> dict:
    from tunesmith.data.tools import schema_problem

    problem = schema_problem(schema)
    if problem is not None:
        at, reason = problem
        raise ValueError(f"not a valid JSON schema{' at ' + at.lstrip('.') if at else ''}: {reason}")
    return schema


def _object_schema(schema: dict) -> dict:
    if schema.get("type", "object") != "object":
        raise ValueError(f"must describe a JSON object (\"type\": \"object\"), not {json.dumps(schema['type'])}: a call's arguments are an object")
    return schema


class FunctionSpec(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")   # OpenAI's rule for names
    description: str | None = None
    parameters: Annotated[dict[str, Any], AfterValidator(_valid_schema), AfterValidator(_object_schema)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: bool | None = None   # the call's arguments are always constrained to `parameters` when forced


class Tool(_Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    schema_: Annotated[dict[str, Any], AfterValidator(_valid_schema)] = Field(default_factory=dict, alias="schema")
    description: str | None = None
    strict: bool | None = None   # always enforced: the reply is decoded under the schema either way


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema: required with type json_schema, and only there")
        return self


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None   # padding against length side channels; never changes the text


class Sampled(_Body):
    """Decoding fields shared by every endpoint."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: Temperature = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)                          # vLLM's: 0 or -1 is off
    min_p: float | None = Field(None, ge=0.0, le=1.0)               # vLLM's: 0 is off
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)  # vLLM's: 1 is off
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: Annotated[dict | None, only_off(None, {})] = None
    # Metadata: accepted, changes no output.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class Structured(Sampled):
    """A reply that may be asked to be JSON (chat and completions, as vLLM takes it on both)."""

    response_format: ResponseFormat | None = None

    def json_reply(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


class ChatRequest(Structured):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None   # false: at most one call per reply
    # The pre-tools API (functions / function_call) is accepted only when off: clients send `tools` today.
    functions: Annotated[list | None, only_off(None, [])] = None
    function_call: Annotated[Any, only_off(None, "none")] = None

    @model_validator(mode="after")
    def _tools_fit_together(self):
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: two tools have the same name")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs true")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice: no tool named {self.tool_choice.function.name!r} in tools ({', '.join(names) or 'none given'})")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice: 'required' needs tools")
        if self.calls_tools() and self.json_reply():
            raise ValueError(
                "response_format: json_object or json_schema together with tools is not supported by this server "
                "(the whole reply is decoded under the schema, so no tool could be called); send tool_choice 'none' or no response_format"
            )
        return self

    @model_validator(mode="after")
    def _results_answer_calls(self):
        """A tool result names a call an earlier assistant message made (a template would render it against
        the wrong call, or none)."""
        made: list[str] = []
        for k, message in enumerate(self.messages):
            made += [c.id for c in message.tool_calls or []]
            if message.role == "tool" and message.tool_call_id not in made:
                raise ValueError(
                    f"messages.{k}.tool_call_id: {message.tool_call_id!r} is not the id of a call made by an earlier assistant "
                    f"message (calls made: {', '.join(made) or 'none'})"
                )
        return self

    def calls_tools(self) -> bool:
        """Whether tools are offered to the model (tools given and tool_choice not 'none')."""
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(Structured):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)   # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)   # the top-n alternatives per token (0: only the chosen one)
    echo: Annotated[bool | None, only_off(None, False)] = None
    best_of: Annotated[int | None, only_off(None, 1)] = None
    suffix: Annotated[str | None, only_off(None, "")] = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class GenerateRequest(Sampled):
    """POST /generate: one prompt (a user message) or a conversation, answered with the model's template."""

    prompt: str | None = None
    messages: list[Message] | None = None
    temperature: Temperature = 0.0   # greedy unless asked: what `tunesmith generate` does
    n: Literal[1] = 1
    stream: Literal[False] = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self
