"""Chat templates: one `ChatTemplate` renders a conversation for training, evaluation and serving.

It is saved in the run directory (`template.json`) and written into the saved tokenizer, so a served
model sees exactly the text it was trained on. Resolving a template also reads from it how an
assistant turn ends (tunesmith.data.turn_end): the end-of-turn token becomes a stop token, marker text
that is not a token becomes a stop text, and a date the template writes is frozen into its text.
Loss masks are built from renderings in tunesmith.data.masks.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunesmith.data.turn_end import find_turn_end, freeze_date, special_ids
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
        """`tools`: OpenAI-style function specs, written where the template writes them (its `tools` variable)."""
        try:
            return tokenizer.apply_chat_template(
                self.template_messages(messages), chat_template=self.source, tokenize=False,
                add_generation_prompt=add_generation_prompt, tools=tools,
            )
        except Exception as err:  # jinja errors, raise_exception() inside model templates
            hint = ""
            if messages and messages[0]["role"] == "system" and not self.source.startswith(MERGE_SYSTEM):
                hint = " (for a template that refuses system messages, data.system_prompt_mode: merge puts them into the first user turn)"
            raise TemplateError(f"template {self.name!r} cannot render this conversation: {err}{hint}") from None

    def template_messages(self, messages: list[dict]) -> list[dict]:
        """The messages as Jinja templates read them: a `reasoning` field as `reasoning_content` (Qwen3-style);
        an assistant's `tool_calls` and a tool message's `tool_call_id` as they are."""
        return [
            {
                "role": m["role"], "content": m["content"],
                **({"reasoning_content": m["reasoning"]} if m.get("reasoning") else {}),
                **{key: m[key] for key in ("tool_calls", "tool_call_id") if key in m},
            }
            for m in messages
        ]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ChatTemplate:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


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
    """Token ids a model is given at inference: the conversation so far (and the tools offered) plus the generation prompt."""
    text = template.render(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def install_template(template: ChatTemplate, tokenizer) -> None:
    """Make the run's template the tokenizer's own, so plain transformers users get the same prompts."""
    tokenizer.chat_template = template.source
