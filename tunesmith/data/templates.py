"""Chat templates: one `ChatTemplate` renders a conversation for training, evaluation and serving.

It is saved in the run directory (`template.json`) and written into the saved tokenizer, so a served
model sees exactly the text it was trained on. Resolving a template also reads from it how an
assistant turn ends (tunesmith.data.turn_end): the end-of-turn token becomes a stop token, marker text
that is not a token becomes a stop text, and a date the template writes is frozen into its text.
Loss masks are built from renderings in tunesmith.data.masks.

Tools: `render(..., tools=)` gives a template that renders tools itself (`supports_tools`: Llama 3.1+,
Qwen2.5+, Mistral, Hermes) the tools, calls and results as they are; any other template is preceded by
the built-in Hermes format (tunesmith.data.tools.HERMES_TOOLS, Jinja that rewrites them into plain
messages), in training, evaluation, serving and the saved tokenizer alike.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunesmith.data.tools import HERMES_TOOLS, uses_tools
from tunesmith.data.turn_end import PROBE_QUESTION, PROBE_REPLY, find_turn_end, freeze_date, special_ids
from tunesmith.errors import TunesmithError

BUILTIN_TEMPLATES = ("chatml", "alpaca")

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

# {bos} and {eot} are filled in per tokenizer (see _builtin_source); the rest is Jinja.
_CHATML = (
    "{bos}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '{eot}' }}{% else %}{{ '<|im_end|>' }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_ALPACA = (
    "{bos}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '{eot}' + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
)


class TemplateError(TunesmithError):
    """The template cannot render an example, or does not render consistently."""


@dataclass
class ChatTemplate:
    # Every field after stop_token_ids has a default, so template.json files of older runs still load.
    name: str                       # 'model', 'chatml', 'alpaca' or the .jinja path it came from
    source: str                     # the Jinja text, complete: nothing is added at render time
    stop_token_ids: list[int]       # generation stops at any of these; labels must contain one per turn
    bos_text: str = ""              # for plain text: what the template would put first (the BOS), if anything
    eos_text: str = ""              # for plain text: appended so the model learns to end a document
    stop_texts: list[str] = field(default_factory=list)  # replies are cut before these (turn-end text that is no special token)
    turn_end: str | None = None     # what the template writes after a reply ('<|im_end|>\n'); None: unknown
    frozen_date: str | None = None  # the day written into `source` in place of strftime_now(...), ISO

    def render(self, tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
        """The conversation as the model reads it; `tools` are OpenAI function tools, and the messages may hold
        tool_calls and tool results (see the module docstring for templates that do not render tools)."""
        messages = self.template_messages(messages)
        source = tool_source(self, tokenizer) if uses_tools(messages, tools) else self.source
        if source is self.source and uses_tools(messages, tools) and prints_arguments(source, tokenizer):
            messages = [with_text_arguments(m) for m in messages]
        try:
            return tokenizer.apply_chat_template(
                messages, tools=tools or None, chat_template=source, tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as err:  # jinja errors, raise_exception() inside model templates
            hint = ""
            if messages and messages[0]["role"] == "system" and not self.source.startswith(MERGE_SYSTEM):
                hint = " (for a template that refuses system messages, data.system_prompt_mode: merge puts them into the first user turn)"
            raise TemplateError(f"template {self.name!r} cannot render this conversation: {err}{hint}") from None

    def template_messages(self, messages: list[dict]) -> list[dict]:
        """The messages as Jinja templates read them: a `reasoning` field as `reasoning_content` (Qwen3-style),
        tool calls with their arguments as an object (templates write them with tojson; OpenAI clients send a
        JSON string), a tool result's tool_call_id and name, and no content as ''."""
        return [template_message(m) for m in messages]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ChatTemplate:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def template_message(m: dict) -> dict:
    out = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("reasoning"):
        out["reasoning_content"] = m["reasoning"]
    if m.get("tool_calls"):
        out["tool_calls"] = [template_call(c) for c in m["tool_calls"]]
    if m["role"] == "tool":
        out.update({key: m[key] for key in ("tool_call_id", "name") if m.get(key)})
    return out


def template_call(call: dict) -> dict:
    function = dict(call.get("function", call))
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except json.JSONDecodeError:
            pass  # not JSON: the template writes the string as it is
    return {**({"id": call["id"]} if call.get("id") else {}), "type": "function", "function": function}


# A call and its result, to see whether a template renders tools: Mistral wants 9-character alphanumeric call ids.
PROBE_TOOL = {"type": "function", "function": {
    "name": "tunesmith0probe0tool", "description": "tunesmith0probe0description",
    "parameters": {"type": "object", "properties": {"tunesmith0probe0arg": {"type": "string"}}},
}}
PROBE_CALL = {"id": "a1b2c3d4e", "type": "function",
               "function": {"name": "tunesmith0probe0tool", "arguments": {"tunesmith0probe0arg": "tunesmith0probe0value"}}}
_PROBE = [
    {"role": "user", "content": PROBE_QUESTION},
    {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
    {"role": "tool", "tool_call_id": "a1b2c3d4e", "name": "tunesmith0probe0tool", "content": "tunesmith0probe0result"},
    {"role": "assistant", "content": PROBE_REPLY},
]
_NATIVE_TOOLS: dict[str, bool] = {}  # template source -> supports_tools


def supports_tools(template: ChatTemplate, tokenizer) -> bool:
    """Whether the template renders tools itself: the tool list, a call with its arguments, and the call's result.
    Found once per template text by rendering a probe conversation."""
    if template.source not in _NATIVE_TOOLS:
        try:
            text = tokenizer.apply_chat_template(_PROBE, tools=[PROBE_TOOL], chat_template=template.source, tokenize=False)
        except Exception:  # a template that refuses the probe (raise_exception) does not take our tool use as it is
            text = ""
        parts = ("tunesmith0probe0description", "tunesmith0probe0value", "tunesmith0probe0result", PROBE_REPLY)
        _NATIVE_TOOLS[template.source] = all(part in text for part in parts)
    return _NATIVE_TOOLS[template.source]


_PRINTED_ARGUMENTS: dict[str, bool] = {}  # template source -> prints_arguments


def prints_arguments(source: str, tokenizer) -> bool:
    """Whether the template writes a call's arguments as they are (Phi-4-mini's `{{ call.function.arguments }}`)
    where the others write `arguments | tojson`: given an object it would write Python's {'key': 'value'}, and
    the model would learn to call tools in it. Found once per template text, from the probe conversation."""
    if source not in _PRINTED_ARGUMENTS:
        try:
            text = tokenizer.apply_chat_template(_PROBE, tools=[PROBE_TOOL], chat_template=source, tokenize=False)
        except Exception:
            text = ""
        _PRINTED_ARGUMENTS[source] = repr(PROBE_CALL["function"]["arguments"]) in text
    return _PRINTED_ARGUMENTS[source]


def with_text_arguments(message: dict) -> dict:
    """A template message whose calls carry their arguments as JSON text, as OpenAI sends them (for prints_arguments)."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
             if isinstance(c["function"].get("arguments"), dict) else c for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def probe_reply(template: ChatTemplate, tokenizer) -> str | None:
    """The reply that makes PROBE_CALL as the template renders it after its generation prompt, up to the end of
    the turn: what a model trained on it writes to call a tool. None when the template renders no such reply."""
    question, answer = _PROBE[0], _PROBE[1]
    try:
        prompt = template.render(tokenizer, [question], add_generation_prompt=True, tools=[PROBE_TOOL])
        full = template.render(tokenizer, [question, answer], tools=[PROBE_TOOL])
    except TemplateError:
        return None
    if not full.startswith(prompt):
        return None
    reply = full[len(prompt):]
    ends = {e.strip() for e in (template.turn_end or "", *template.stop_texts, *(tokenizer.decode([i]) for i in template.stop_token_ids))}
    return reply[: min((reply.find(e) for e in ends if e and e in reply), default=len(reply))]


def tool_source(template: ChatTemplate, tokenizer) -> str:
    """The Jinja text that renders tool use: the template's own when it supports tools, else the built-in
    Hermes format before it (a no-op for conversations without tools)."""
    return template.source if supports_tools(template, tokenizer) else HERMES_TOOLS + template.source


def _single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids([text])
    if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return None


def _adds_bos(tokenizer) -> bool:
    """Llama-2-style tokenizers put BOS first on their own; templates must then write it themselves,
    because chat templates are tokenised with add_special_tokens=False."""
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]


def _builtin_source(name: str, tokenizer) -> tuple[str, list[int]]:
    bos = "{{ bos_token }}" if _adds_bos(tokenizer) else ""
    eos = tokenizer.eos_token or ""
    if name == "chatml":
        im_end = _single_token_id(tokenizer, "<|im_end|>")
        # Without a real <|im_end|> token the marker is several ordinary tokens; end the turn
        # with EOS as well, so generation still stops on one token.
        eot = "<|im_end|>" if im_end is not None else "<|im_end|>" + eos
        stops = [im_end] if im_end is not None else []
        return _CHATML.replace("{bos}", bos).replace("{eot}", eot), stops
    return _ALPACA.replace("{bos}", bos).replace("{eot}", eos), []


def resolve_template(
    name: str, tokenizer, generation_eos: int | list[int] | None = None, today: datetime.date | None = None
) -> ChatTemplate:
    """Build the template a run uses: the tokenizer's own ('model'), a built-in, or a .jinja file.

    Stop tokens: the token the template ends an assistant turn with, the tokenizer's EOS, and the
    model's generation-config EOS ids. Stop texts: turn-end marker text that is no token, and the text
    of any stop token that decoding keeps (one that is not a special token)."""
    stops: list[int] = []
    if name == "model":
        if not tokenizer.chat_template:
            raise TemplateError(
                "the model's tokenizer has no chat template: set data.template to chatml, alpaca or a .jinja file"
            )
        source = tokenizer.chat_template
    elif name in BUILTIN_TEMPLATES:
        source, stops = _builtin_source(name, tokenizer)
    else:
        path = Path(name)
        if not path.is_file():
            raise TemplateError(f"data.template: {name!r} is not 'model', 'chatml', 'alpaca' or an existing .jinja file")
        source = path.read_text(encoding="utf-8")
    source, frozen_date = freeze_date(source, today or datetime.date.today())
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    stops += [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    end = find_turn_end(source, tokenizer, set(stops))
    if end is not None and end.token_id is not None:
        stops.append(end.token_id)
    stops = sorted(set(stops))
    specials = special_ids(tokenizer)
    texts = [end.marker] if end is not None and end.token_id is not None else []
    texts += [tokenizer.decode([i]) for i in stops if i not in specials]
    return ChatTemplate(
        name=name,
        source=source,
        stop_token_ids=stops,
        bos_text=tokenizer.bos_token if _adds_bos(tokenizer) else "",
        eos_text=tokenizer.eos_token or "",
        stop_texts=list(dict.fromkeys(t for t in texts if t.strip())),
        turn_end=end.text if end is not None else None,
        frozen_date=frozen_date,
    )


# Put before a template's own text: a system message becomes the head of the first user turn, for
# templates that drop or refuse system messages (Mistral v0.3 keeps it only in the last user turn, Gemma raises).
MERGE_SYSTEM = (
    "{%- if messages|length > 1 and messages[0]['role'] == 'system' and messages[1]['role'] == 'user' -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}] + messages[2:] -%}"
    "{%- endif -%}"
)


def merging_system(template: ChatTemplate) -> ChatTemplate:
    """The template with data.system_prompt_mode: merge written into its text, so every renderer merges alike."""
    if template.source.startswith(MERGE_SYSTEM):
        return template
    return replace(template, source=MERGE_SYSTEM + template.source)


def prompt_ids(template: ChatTemplate, tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids a model is given at inference: the conversation so far (with the tools it may call) plus the generation prompt."""
    text = template.render(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def install_template(template: ChatTemplate, tokenizer) -> None:
    """Make the run's template the tokenizer's own, so plain transformers users (and other servers) get the same
    prompts, tools included (`apply_chat_template(..., tools=...)`)."""
    tokenizer.chat_template = tool_source(template, tokenizer)
