"""What the template checks found, said for people: the error that stops a run whose data a template
does not render the way it would be trained (how many examples failed each check, the first, what to
change), the refusal of a template that ends turns with no token, and the preflight's template lines
(stop tokens and where each comes from, stop texts, frozen date, merged system prompt, split turns).
"""

from __future__ import annotations

from tunesmith.config import DataConfig
from tunesmith.data.report import DataReport
from tunesmith.data.templates import MERGE_SYSTEM, ChatTemplate, TemplateError, supports_tools
from tunesmith.data.turn_end import writes_live_date


# What to change, per kind of failed check (tunesmith.data.masks.Problem): (remedy, remedy once data.multi_turn is split).
REMEDIES = {
    "dropped_system": (
        "the template drops system messages (Mistral v0.3 keeps one only in the last user turn): set "
        "data.system_prompt_mode: merge to put the system text (data.system_prompt too) into the first user turn",
    ) * 2,
    "dropped_user": ("the template drops user messages: fix the template",) * 2,
    "dropped_assistant": (
        "the template drops part of the reply (DeepSeek-R1's strips <think> reasoning from assistant turns): set "
        "data.multi_turn: split to train each reply as the model writes it after the inference prompt, or give "
        "reasoning in the assistant message's `reasoning` field if the template renders reasoning_content (Qwen3)",
        "the template does not render the reasoning field (it reads no reasoning_content): write the reasoning into "
        "the reply's content the way the model writes it (e.g. <think>...</think> before the answer)",
    ),
    "dropped_tool": ("the template drops tool results: fix the template, or use one that renders tool messages",) * 2,
    "dropped_tool_call": (
        "the template drops tool calls or their arguments, though it renders tools: fix the template, or set data.template: "
        "chatml to use the built-in Hermes tool format",
    ) * 2,
    "dropped_tools": (
        "the template does not show the model the tools it may call (a system message it drops, or tools it ignores): "
        "set data.system_prompt_mode: merge if it drops system messages, else fix the template",
    ) * 2,
    "inconsistent": (
        "the template is not prefix-consistent over turns (Qwen3 drops earlier turns' thinking, Phi-3 ends only the "
        "last turn with EOS): set data.multi_turn: split to train each assistant turn as its own example, its prompt "
        "rendered exactly as at inference",
        "even a conversation's last turn does not follow the prompt rendered with the generation prompt: fix the template",
    ),
    "prefix": (
        "inference would feed the model other tokens than training (the prompt ends mid-token, e.g. a reply that "
        "starts with a newline after a generation prompt ending in one): fix the template, or strip the replies",
    ) * 2,
}


def check_problems(report: DataReport, template: ChatTemplate, cfg: DataConfig) -> None:
    """Stop the run when any example failed a mask check: how many of each kind, the first, and what to change."""
    splits = [s for s in (report.train, report.eval) if s.problems]
    if not splits:
        return
    checked = report.train.template_checked + report.eval.template_checked
    lines = []
    for kind, (remedy, remedy_split) in REMEDIES.items():
        n = sum(s.problems.get(kind, 0) for s in splits)
        if n:
            first = next(s.first_problem[kind] for s in splits if kind in s.first_problem)
            lines.append(f"  - {n} of {checked} examples, first {first}\n    {remedy_split if cfg.multi_turn == 'split' else remedy}")
    raise TemplateError(f"template {template.name!r} does not render this data the way it would be trained:\n" + "\n".join(lines))


def check_turn_end(template: ChatTemplate, tokenizer) -> None:
    """Refuse a template whose assistant turns end with no token at all: the model could never learn to stop."""
    if template.turn_end is None:
        return  # the probe could not be rendered: each example's labels are still checked for a stop token
    if end_of_turn(template, tokenizer) is None:
        eos = tokenizer.eos_token or "an EOS token"
        raise TemplateError(
            f"template {template.name!r} ends an assistant reply with {template.turn_end!r}, which holds no token that "
            f"ends a turn, so the model could never learn to stop: end assistant turns with a special token, e.g. {eos} "
            "(`eos_token` in the Jinja text)"
        )


def end_of_turn(template: ChatTemplate, tokenizer) -> int | None:
    """The stop token the template writes after a reply (the first one in its turn end)."""
    ids = tokenizer(template.turn_end or "", add_special_tokens=False)["input_ids"]
    return next((i for i in ids if i in template.stop_token_ids), None)


def stop_token_names(template: ChatTemplate, tokenizer) -> list[str]:
    """Each stop token with where it comes from: '<|im_end|> (EOS, ends assistant turns in the template)'."""
    ends_turn = end_of_turn(template, tokenizer)
    names = []
    for i in template.stop_token_ids:
        origins = [name for name, yes in (("EOS", i == tokenizer.eos_token_id), ("ends assistant turns in the template", i == ends_turn)) if yes]
        names.append(f"{tokenizer.convert_ids_to_tokens(i)} ({', '.join(origins) or 'generation config'})")
    return names


def template_notes(template: ChatTemplate, tokenizer, cfg: DataConfig, report: DataReport) -> list[str]:
    """What the template analysis found and what was done about it, for the preflight."""
    notes = []
    ends_turn = end_of_turn(template, tokenizer)
    if ends_turn is not None:
        notes.append(f"assistant replies end with {template.turn_end!r}: trained through {tokenizer.convert_ids_to_tokens(ends_turn)}")
    if template.stop_texts:
        texts = ", ".join(repr(t) for t in template.stop_texts)
        notes.append(f"replies are cut at {texts} in generate, eval and serve: template text the tokenizer has no special token for")
    if template.frozen_date:
        notes.append(
            f"the template writes today's date: frozen at {template.frozen_date} in the run's template, so evaluation and "
            "serving render the prompt training saw"
        )
    if writes_live_date(template.source):
        notes.append("warning: the template computes a date format as it renders: prompts on another day will differ from training")
    if template.source.startswith(MERGE_SYSTEM):
        notes.append("system messages are merged into the first user turn (data.system_prompt_mode: merge)")
    if cfg.multi_turn == "split":
        for name, s in (("train", report.train), ("eval", report.eval)):
            if s.conversations:
                notes.append(
                    f"data.multi_turn: split: {name} {s.conversations} conversations became {s.examples} examples, one per "
                    "assistant turn, each prompt rendered exactly as at inference"
                )
    with_tools = report.train.with_tools + report.eval.with_tools
    if with_tools:
        how = ("as the template renders them itself" if supports_tools(template, tokenizer)
               else "in the built-in Hermes format (<tools>, <tool_call>, <tool_response>): the template does not render tools")
        notes.append(f"{with_tools} examples use tools, rendered {how}; tool calls are trained, tool results are not")
    rebuilt = report.train.rebuilt + report.eval.rebuilt
    if rebuilt:
        notes.append(
            f"{rebuilt} replies rebuilt: the template does not write the reply itself, so it is trained as the model writes "
            "it after the inference prompt (the template's turn opening and ending around the reply)"
        )
    return notes
