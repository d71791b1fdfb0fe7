"""Loss masks: which tokens of a rendered conversation a model is trained on, and the checks that the
mask matches what inference will see.

Masks come from rendering, not from searching for marker strings: for assistant turn k, the trained
span starts where `render(messages[:k], add_generation_prompt=True)` ends (the prompt at inference)
and runs through the first stop token after it (the end-of-turn token, so the model learns to stop).
What a template writes after that token (ChatML's newline, Mistral v0.1's space) is never generated
and is not trained, so a token that runs on into the next turn cannot be trained either. Padding is
masked by position in the collator, never by token id (with pad == eos, masking by id would erase EOS).

Tool use: an assistant turn that calls tools is trained like any reply, its calls included, through its
end-of-turn token; tool results (`tool` messages) are context, never trained, like user turns.

Every example is checked; a failed check is a `Problem`, counted by tunesmith.data.prepare, which
stops the run and shows the first of each kind:
  dropped       a message's content (or reasoning, a tool call's name and arguments, a tool's name and
                description) is not in the rendering: the template drops it
  inconsistent  turn k renders differently depending on what follows it (not prefix-consistent)
  prefix        the prompt tokenises differently from the tokens before the trained span

A conversation whose only trained turn is its last one (alignment replies, `data.multi_turn: split`)
is trained as inference produces it: the prompt rendered with the generation prompt, then the reply.
When the template does not write that reply itself (DeepSeek-R1 strips `<think>` from assistant turns),
the reply is rebuilt: the template's turn opening and ending around the reply as written in the data,
less what the generation prompt already wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import json

from tunesmith.data.templates import ChatTemplate

# Stands in for a reply when reading how the template opens and ends an assistant turn.
SENTINEL = "tunesmith0reply0sentinel"


@dataclass
class Problem:
    kind: str       # dropped_ + system, user, assistant, tool, tool_call, tools; inconsistent, prefix
    detail: str     # one line: what differs


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]                                   # -100 where not trained
    spans: list[tuple[int, int]] = field(default_factory=list)  # token spans of trained turns [start, end)
    problem: Problem | None = None                      # the first failed check; the ids are empty then
    rebuilt: bool = False                               # the reply was rebuilt around the template (see above)


def tokenize_conversation(
    template: ChatTemplate, tokenizer, messages: list[dict], train_on_prompt: bool = False, trained_from: int = 0,
    tools: list[dict] | None = None,
) -> Tokenized:
    """Token ids and labels: every assistant turn from message `trained_from` on is trained, with its end-of-turn token."""
    full = template.render(tokenizer, messages, tools=tools)
    # A last reply the template does not write may still be rebuilt (see above): check it after layout.
    last_only = last_reply_only(messages, trained_from)
    problem = dropped(full, messages, trained_from, roles=("system", "user", "tool") if last_only else ("system", "user", "tool", "assistant"))
    problem = problem or dropped_tools(full, tools)
    if problem:
        return Tokenized([], [], problem=problem)
    laid_out = layout(template, tokenizer, messages, trained_from, full, tools)
    if isinstance(laid_out, Problem):
        return Tokenized([], [], problem=laid_out)
    text, char_spans, rebuilt = laid_out
    problem = dropped(text, messages, trained_from, roles=("assistant",)) if last_only else None
    if problem:
        return Tokenized([], [], problem=problem)

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = list(ids) if train_on_prompt else [-100] * len(ids)
    stops = set(template.stop_token_ids)
    token_spans = []
    for start, end in char_spans:
        # Tokens that start inside the turn and end within it; one straddling the start means the prompt
        # ends mid-token, which the prefix check below reports.
        inside = [i for i, (s, e) in enumerate(offsets) if start <= s and e <= end and e > s]
        first = inside[0] if inside else len(ids)
        stop = next((i for i in inside if ids[i] in stops), None)
        last = stop + 1 if stop is not None else (inside[-1] + 1 if inside else first)
        token_spans.append((first, last))
        if not train_on_prompt:
            labels[first:last] = ids[first:last]
        prompt = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
        if prompt != ids[:first]:
            return Tokenized([], [], problem=Problem("prefix", prefix_detail(tokenizer, prompt, ids[:first])))
    return Tokenized(input_ids=ids, labels=labels, spans=token_spans, rebuilt=rebuilt)


def layout(template: ChatTemplate, tokenizer, messages: list[dict], trained_from: int, full: str, tools: list[dict] | None = None):
    """(text, character span of every trained assistant turn, rebuilt?) or the Problem that prevents it."""
    if last_reply_only(messages, trained_from):
        before = template.render(tokenizer, messages[:-1], add_generation_prompt=True, tools=tools)
        reply = full[len(before) :] if full.startswith(before) else None
        if reply is None or dropped(reply, messages[-1:], 0, roles=("assistant",)):
            reply = rebuilt_reply(template, tokenizer, messages, before, tools)
            if isinstance(reply, Problem):
                return reply
            return before + reply, [(len(before), len(before) + len(reply))], True
        return full, [(len(before), len(full))], False
    spans = []
    for k in trained_turns(messages, trained_from):
        before = template.render(tokenizer, messages[:k], add_generation_prompt=True, tools=tools)
        upto = template.render(tokenizer, messages[: k + 1], tools=tools)
        if not upto.startswith(before):
            return Problem("inconsistent", f"assistant turn messages[{k}]: {parting(before, 'the prompt at inference', upto, 'the finished turn')}")
        if not full.startswith(upto):
            return Problem("inconsistent", f"assistant turn messages[{k}]: {parting(upto, 'the turn alone', full, 'the whole conversation')}")
        spans.append((len(before), len(upto)))
    return full, spans, False


def trained_turns(messages: list[dict], trained_from: int) -> list[int]:
    return [k for k, m in enumerate(messages) if m["role"] == "assistant" and k >= trained_from]


def last_reply_only(messages: list[dict], trained_from: int) -> bool:
    """Whether the only trained turn is the last message: a reply to train as inference produces it."""
    return trained_turns(messages, trained_from) == [len(messages) - 1]


def rebuilt_reply(template: ChatTemplate, tokenizer, messages: list[dict], before: str, tools: list[dict] | None = None) -> str | Problem:
    """The last reply as the model writes it after `before`: the template's opening and ending of an
    assistant turn around the reply's content, less what the generation prompt already wrote."""
    history = messages[:-1]
    base = template.render(tokenizer, history, tools=tools)
    probe = template.render(tokenizer, [*history, {"role": "assistant", "content": SENTINEL}], tools=tools)
    at = probe.find(SENTINEL)
    if at < 0 or not probe.startswith(base) or not before.startswith(base):
        return Problem(
            "inconsistent",
            f"the reply messages[{len(messages) - 1}] cannot follow the prompt at inference: "
            + parting(before, "the prompt at inference", probe, "the conversation with a reply"),
        )
    reply = probe[len(base) : at] + messages[-1]["content"] + probe[at + len(SENTINEL) :]
    generation_prompt = before[len(base) :]
    if not reply.startswith(generation_prompt):
        return Problem(
            "inconsistent",
            f"the generation prompt ends {generation_prompt!r}, but the reply messages[{len(messages) - 1}] "
            f"renders as {reply[: len(generation_prompt) + 20]!r}: write the reply the way the model continues that prompt",
        )
    return reply[len(generation_prompt) :]


def dropped(text: str, messages: list[dict], trained_from: int, roles: tuple[str, ...]) -> Problem | None:
    """The first message of `roles` whose content (or reasoning) does not appear in `text`. Whitespace is
    ignored: templates trim contents and re-space <think> blocks, which drops nothing. Assistant turns
    before `trained_from` are prompt history, rendered as inference renders it, and are not checked."""
    squashed = squash(text)
    for k, m in enumerate(messages):
        if m["role"] not in roles or (m["role"] == "assistant" and k < trained_from):
            continue
        for part in ("content", "reasoning"):
            value = m.get(part) or ""
            # Some templates write a tool result as a JSON string (Llama 3.1): escaped, nothing is lost.
            escaped = json.dumps(value, ensure_ascii=False)[1:-1] if m["role"] == "tool" else value
            if value.strip() and squash(value) not in squashed and squash(escaped) not in squashed:
                what = "reasoning" if part == "reasoning" else f"{m['role']} message" if m["role"] != "assistant" else "reply"
                return Problem(f"dropped_{m['role']}", f"the {what} messages[{k}] ({value.strip()[:40]!r}) is not in the rendered text")
        for i, call in enumerate(m.get("tool_calls") or ()):
            function = call["function"]
            arguments = json.dumps(function["arguments"], ensure_ascii=False)
            for what, value, shown in (("name", function["name"], squash(function["name"]) in squashed),
                                       ("arguments", arguments, arguments_shown(function["arguments"], squashed))):
                if not shown:
                    return Problem("dropped_tool_call", f"the {what} of tool call messages[{k}].tool_calls[{i}] ({value[:40]!r}) is not in the rendered text")
    return None


def arguments_shown(arguments: dict, squashed: str, markup: int = 16) -> bool:
    """Whether a call's arguments are in the (squashed) rendered text: as JSON (most templates), or each name with
    its value a little markup after it, as Qwen3-Coder's <parameter=name>value</parameter> writes them (a string
    as it is, an object or a list as JSON, anything else as JSON or Python writes it: 20, true or True). Near its
    name, not anywhere: the tool list holds the names, the user's message the values."""
    if squash(json.dumps(arguments, ensure_ascii=False)) in squashed:
        return True
    for name, value in arguments.items():
        spellings = [squash(value)] if isinstance(value, str) else [squash(json.dumps(value, ensure_ascii=False)), squash(str(value))]
        key, at, found = squash(name), squashed.find(squash(name)), False
        while at >= 0 and not found:
            near = squashed[at + len(key) : at + len(key) + markup + max(map(len, spellings))]
            found = any(v in near[: markup + len(v)] for v in spellings)
            at = squashed.find(key, at + 1)
        if not found:
            return False
    return True


def dropped_tools(text: str, tools: list[dict] | None) -> Problem | None:
    """The first tool whose name or description the rendering leaves out: the model would call tools it was never shown."""
    squashed = squash(text)
    for i, tool in enumerate(tools or ()):
        function = tool["function"]
        for part in ("name", "description"):
            value = function.get(part) or ""
            escaped = json.dumps(value, ensure_ascii=False)[1:-1]  # inside a tool's JSON (Qwen2.5, Llama 3.1)
            if value.strip() and squash(value) not in squashed and squash(escaped) not in squashed:
                return Problem("dropped_tools", f"the {part} of tools[{i}] ({value.strip()[:40]!r}) is not in the rendered text")
    return None


def squash(text: str) -> str:
    return "".join(text.split())


def parting(a: str, a_is: str, b: str, b_is: str) -> str:
    """Where two renderings that should share a prefix part, shown around the first difference."""
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{a_is} reads {a[max(0, at - 30) : at + 20]!r} where {b_is} reads {b[max(0, at - 30) : at + 20]!r}"


def prefix_detail(tokenizer, prompt: list[int], trained: list[int]) -> str:
    """Where the inference prompt's tokens part from the training tokens, decoded."""
    at = next((i for i, (a, b) in enumerate(zip(prompt, trained)) if a != b), min(len(prompt), len(trained)))
    return (
        f"the prompt at inference ends in tokens {decoded(tokenizer, prompt[max(0, at - 3) :])}, "
        f"but training has {decoded(tokenizer, trained[max(0, at - 3) : at + 3])} there"
    )


def decoded(tokenizer, ids: list[int]) -> str:
    return " ".join(repr(tokenizer.decode([i])) for i in ids) or "(nothing)"


def tokenize_text(template: ChatTemplate, tokenizer, text: str) -> Tokenized:
    """Plain language-modelling text: BOS (when the tokenizer uses one) + text + EOS, all trained."""
    ids = tokenizer(template.bos_text + text + template.eos_text, add_special_tokens=False)["input_ids"]
    return Tokenized(input_ids=ids, labels=list(ids), spans=[(0, len(ids))])
