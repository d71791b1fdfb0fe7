"""Chat templates: render conversations and mark the tokens a model is trained on.

One `ChatTemplate` object drives training, evaluation and serving: it is saved in the run
directory (`template.json`) and written into the saved tokenizer, so a served model sees
exactly the text it was trained on.

Loss masks come from rendering, not from searching for marker strings: for assistant turn k,
the trained span starts where `render(messages[:k], add_generation_prompt=True)` ends and
stops where `render(messages[:k+1])` ends. That span includes the end-of-turn token, so the
model learns to stop; padding is masked by position in the collator, never by token id (with
pad == eos, masking by id would erase every EOS).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    name: str                       # 'model', 'chatml', 'alpaca' or the .jinja path it came from
    source: str                     # the Jinja text, complete: nothing is added at render time
    stop_token_ids: list[int]       # generation stops at any of these; labels must contain one per turn
    bos_text: str = ""              # for plain text: what the template would put first (the BOS), if anything
    eos_text: str = ""              # for plain text: appended so the model learns to end a document

    def render(self, tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=self.source, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as err:  # jinja errors, raise_exception() inside model templates
            raise TemplateError(f"template {self.name!r} cannot render this conversation: {err}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ChatTemplate:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]                                   # -100 where not trained
    spans: list[tuple[int, int]] = field(default_factory=list)  # token spans of trained turns [start, end)
    prompt_prefix_ok: bool = True                       # prompt-with-generation-prompt tokenises to the training prefix


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


def resolve_template(name: str, tokenizer, generation_eos: int | list[int] | None = None) -> ChatTemplate:
    """Build the template a run uses: the tokenizer's own ('model'), a built-in, or a .jinja file."""
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
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    extra = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    stops += extra
    return ChatTemplate(
        name=name,
        source=source,
        stop_token_ids=sorted(set(stops)),
        bos_text=tokenizer.bos_token if _adds_bos(tokenizer) else "",
        eos_text=tokenizer.eos_token or "",
    )


def assistant_char_spans(template: ChatTemplate, tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn in it."""
    full = template.render(tokenizer, messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = template.render(tokenizer, messages[: k + 1])
        if not upto.startswith(before) or not full.startswith(upto):
            raise TemplateError(
                f"template {template.name!r} renders turn {k} differently depending on what follows it, so the "
                "prompt seen at inference would not match training (the prompt with add_generation_prompt must be "
                f"a prefix of the conversation).\n  prompt ends: {before[-60:]!r}\n  conversation: {upto[len(before) - 60 : len(before) + 20]!r}"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize_conversation(
    template: ChatTemplate, tokenizer, messages: list[dict], train_on_prompt: bool = False, trained_from: int = 0
) -> Tokenized:
    """Token ids and labels: every assistant turn from message `trained_from` on is trained, with its end-of-turn token."""
    full, char_spans = assistant_char_spans(template, tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = list(ids) if train_on_prompt else [-100] * len(ids)
    token_spans = []
    prefix_ok = True
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    for k, (start, end) in zip(turns, char_spans):
        if k < trained_from:
            continue
        # A token belongs to the turn when it starts inside it: a token straddling the boundary
        # would mean the prompt ends mid-token, which the prefix check below reports.
        inside = [i for i, (s, e) in enumerate(offsets) if start <= s < end and e > s]
        first, last = (inside[0], inside[-1] + 1) if inside else (len(ids), len(ids))
        token_spans.append((first, last))
        if not train_on_prompt:
            labels[first:last] = ids[first:last]
        prompt = template.render(tokenizer, messages[:k], add_generation_prompt=True)
        prefix_ok &= tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids[:first]
    return Tokenized(input_ids=ids, labels=labels, spans=token_spans, prompt_prefix_ok=prefix_ok)


def tokenize_text(template: ChatTemplate, tokenizer, text: str) -> Tokenized:
    """Plain language-modelling text: BOS (when the tokenizer uses one) + text + EOS, all trained."""
    ids = tokenizer(template.bos_text + text + template.eos_text, add_special_tokens=False)["input_ids"]
    return Tokenized(input_ids=ids, labels=list(ids), spans=[(0, len(ids))])


def prompt_ids(template: ChatTemplate, tokenizer, messages: list[dict]) -> list[int]:
    """Token ids a model is given at inference: the conversation so far plus the generation prompt."""
    text = template.render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def install_template(template: ChatTemplate, tokenizer) -> None:
    """Make the run's template the tokenizer's own, so plain transformers users get the same prompts."""
    tokenizer.chat_template = template.source
