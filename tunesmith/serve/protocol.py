"""Request bodies of the OpenAI-compatible API, and its error shape.

Fields follow OpenAI's chat and completions APIs, typed as strictly as OpenAI types them: `"stream": "yes"`,
`"max_tokens": "10"` or `1.0` are 422s naming the field (a whole number for a float field is fine). Nothing is
accepted and then ignored:
- every field that changes the output is implemented (with vLLM's `top_k` and `repetition_penalty`),
- fields this server does not implement (logprobs, tools, response_format, logit_bias, ...) are accepted only
  with the value that means "off", so clients that send their defaults work,
- metadata that changes no output (`user`, `metadata`, `store`, ...) is accepted,
- any other field is a 422.
Ranges are checked here, at the edge, so no request reaches the engine with values it cannot decode with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Below this, logits / temperature overflows float32 for ordinary logits (vLLM clamps to the same minimum).
MIN_TEMPERATURE = 0.01


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


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    # Echoed back by clients that resend a previous reply: fine while empty.
    name: Annotated[str | None, only_off(None)] = None
    refusal: Annotated[str | None, only_off(None)] = None
    tool_calls: Annotated[list | None, only_off(None, [])] = None
    function_call: Annotated[dict | None, only_off(None)] = None
    audio: Annotated[dict | None, only_off(None)] = None
    annotations: Annotated[list | None, only_off(None, [])] = None

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


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


class ChatRequest(Sampled):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool | None, only_off(None, False)] = None
    top_logprobs: Annotated[int | None, only_off(None, 0)] = None
    tools: Annotated[list | None, only_off(None, [])] = None
    tool_choice: Annotated[Any, only_off(None, "none")] = None
    functions: Annotated[list | None, only_off(None, [])] = None
    function_call: Annotated[Any, only_off(None, "none")] = None
    parallel_tool_calls: bool | None = None   # only means something with tools
    response_format: Annotated[dict | None, only_off(None, {"type": "text"})] = None


class CompletionRequest(Sampled):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)   # OpenAI's default for completions
    logprobs: Annotated[int | None, only_off(None, 0)] = None
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
