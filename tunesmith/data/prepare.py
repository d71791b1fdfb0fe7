"""From the recipe's data section to tokenized train/eval rows, and the counts that prove nothing was lost.

Every row read is accounted for: kept, dropped with a reason, or truncated. The checks a run must pass
before step 1 live here too, on every example: the template ends assistant turns with a token; every
kept example has its end-of-turn token in the labels; and the mask checks of tunesmith.data.masks
(nothing the data holds is dropped by the template, turns render the same whatever follows them, the
prompt rendered with the generation prompt tokenises to exactly the prefix used in training). A failed
check stops the run with how many examples failed each, the first of them, and what to change.
"""

from __future__ import annotations

import random
from dataclasses import asdict

from tunesmith.config import METHOD_FORMATS, DataConfig
from tunesmith.data.formats import Example
from tunesmith.data.load import load_examples
from tunesmith.data.masks import Tokenized, tokenize_conversation, tokenize_text
from tunesmith.data.prepare_align import mark_aligned, tokenize_aligned
from tunesmith.data.report import DataReport, SplitReport, count, length_stats, note_problem
from tunesmith.data.templates import MERGE_SYSTEM, ChatTemplate, TemplateError
from tunesmith.data.turn_end import writes_live_date
from tunesmith.errors import TunesmithError


def read_split(files: list[str], cfg: DataConfig, report: DataReport, formats: tuple[str, ...] = METHOD_FORMATS["sft"]) -> list:
    examples = []
    for file in files:
        rows, load_report = load_examples(
            file, fmt=cfg.format, columns=cfg.columns, system_prompt=cfg.system_prompt, on_bad_row=cfg.on_bad_row, formats=formats
        )
        report.files.append(asdict(load_report))
        examples += rows
    return examples


def split_eval(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * share))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def split_turns(examples: list[Example]) -> list[Example]:
    """data.multi_turn: split: one example per trained assistant turn, the conversation before it as its prompt."""
    out = []
    for example in examples:
        messages = example.messages or []
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k >= example.trained_from]
        if len(turns) <= 1:
            out.append(example)
            continue
        out += [Example(messages[: k + 1], None, f"{example.where} (turn messages[{k}])", trained_from=k) for k in turns]
    return out


def tokenize_example(example: Example, template: ChatTemplate, tokenizer, train_on_prompt: bool) -> Tokenized:
    try:
        if example.text is not None:
            return tokenize_text(template, tokenizer, example.text)
        return tokenize_conversation(template, tokenizer, example.messages, train_on_prompt, example.trained_from)
    except TemplateError as err:
        raise TemplateError(f"{example.where}: {err}") from None


def turns_have_stop(tok: Tokenized, stop_ids: set[int]) -> bool:
    return all(any(label in stop_ids for label in tok.labels[a:b]) for a, b in tok.spans)


def truncate(tok: Tokenized, max_length: int, side: str) -> Tokenized:
    cut = len(tok.input_ids) - max_length
    if side == "truncate_right":
        spans = [(a, min(b, max_length)) for a, b in tok.spans if a < max_length]
        return Tokenized(tok.input_ids[:max_length], tok.labels[:max_length], spans, rebuilt=tok.rebuilt)
    spans = [(max(a - cut, 0), b - cut) for a, b in tok.spans if b > cut]
    return Tokenized(tok.input_ids[cut:], tok.labels[cut:], spans, rebuilt=tok.rebuilt)


def tokenize_split(
    examples: list[Example], cfg: DataConfig, template: ChatTemplate, tokenizer, report: SplitReport
) -> list[dict]:
    stop_ids = set(template.stop_token_ids)
    rows, lengths = [], []
    report.conversations = len(examples)
    if cfg.multi_turn == "split":
        examples = split_turns(examples)
    report.examples = len(examples)
    for example in examples:
        tok = tokenize_example(example, template, tokenizer, cfg.train_on_prompt)
        if example.messages is not None:
            report.template_checked += 1
            if tok.problem:
                note_problem(report, tok.problem, example.where)
                continue
            report.rebuilt += tok.rebuilt
        has_stop = turns_have_stop(tok, stop_ids)
        if not has_stop:
            raise TemplateError(
                f"{example.where}: the trained tokens of this example contain no end-of-turn/EOS token "
                f"(stop ids {sorted(stop_ids)}), so the model would never learn to stop. The template "
                f"{template.name!r} must end each assistant turn with one of them."
            )
        if len(tok.input_ids) > cfg.max_length:
            if cfg.truncation == "error":
                raise TunesmithError(
                    f"{example.where}: {len(tok.input_ids)} tokens > data.max_length {cfg.max_length} "
                    "(set data.truncation to drop, truncate_right or truncate_left)"
                )
            if cfg.truncation == "drop":
                count(report.dropped, "too_long")
                continue
            tok = truncate(tok, cfg.max_length, cfg.truncation)
            report.truncated += 1
            has_stop = turns_have_stop(tok, stop_ids)
        if all(label == -100 for label in tok.labels):
            count(report.dropped, "no_trained_tokens_after_truncation")
            continue
        report.with_eos += has_stop
        report.trained_tokens += sum(label != -100 for label in tok.labels)
        lengths.append(len(tok.input_ids))
        rows.append({"input_ids": tok.input_ids, "labels": tok.labels})
    report.kept = len(rows)
    report.lengths = length_stats(lengths)
    return rows


def mark_trained(tokenizer, row: dict) -> str:
    """The example as text with trained tokens between ⟦ and ⟧."""
    ids, labels = row["input_ids"], row["labels"]
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != -100) != (labels[start] != -100):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            pieces.append(f"⟦{text}⟧" if labels[start] != -100 else text)
            start = i
    return "".join(pieces)


# What a method's rows hold; every kind but `conversation` is tokenized by tunesmith.data.prepare_align.
KINDS = {"sft": "conversation", "dpo": "preference", "reward": "preference", "kto": "unpaired", "ppo": "prompt", "grpo": "prompt"}


def prepare_data(
    cfg: DataConfig, tokenizer, template: ChatTemplate, seed: int, method: str = "sft"
) -> tuple[list[dict], list[dict], DataReport]:
    kind = KINDS[method]
    report = DataReport(
        kind=kind,
        template=template.name,
        stop_tokens=stop_token_names(template, tokenizer),
        max_length=cfg.max_length,
        truncation=cfg.truncation,
    )
    train_examples = read_split(cfg.train, cfg, report, METHOD_FORMATS[method])
    if cfg.eval:
        eval_examples = read_split(cfg.eval, cfg, report, METHOD_FORMATS[method])
    elif cfg.eval_split > 0:
        train_examples, eval_examples = split_eval(train_examples, cfg.eval_split, seed)
    else:
        eval_examples = []
    if kind in ("preference", "unpaired") or (kind == "conversation" and any(e.messages for e in train_examples + eval_examples)):
        check_turn_end(template, tokenizer)
    if kind == "conversation":
        train_rows = tokenize_split(train_examples, cfg, template, tokenizer, report.train)
        eval_rows = tokenize_split(eval_examples, cfg, template, tokenizer, report.eval)
    else:
        train_rows = tokenize_aligned(kind, train_examples, cfg, template, tokenizer, report.train)
        eval_rows = tokenize_aligned(kind, eval_examples, cfg, template, tokenizer, report.eval)
    check_problems(report, template, cfg)
    if not train_rows:
        raise TunesmithError(f"no training example left after filtering: dropped {dict(report.train.dropped)}")
    report.template_notes = template_notes(template, tokenizer, cfg, report)
    report.first_example = mark_trained(tokenizer, train_rows[0]) if kind == "conversation" else mark_aligned(tokenizer, kind, train_rows[0])
    return train_rows, eval_rows, report


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
    ids = tokenizer(template.turn_end, add_special_tokens=False)["input_ids"]
    if not set(ids) & set(template.stop_token_ids):
        eos = tokenizer.eos_token or "an EOS token"
        raise TemplateError(
            f"template {template.name!r} ends an assistant reply with {template.turn_end!r}, which holds no token that "
            f"ends a turn, so the model could never learn to stop: end assistant turns with a special token, e.g. {eos} "
            "(`eos_token` in the Jinja text)"
        )


def stop_token_names(template: ChatTemplate, tokenizer) -> list[str]:
    """Each stop token with where it comes from: '<|im_end|> (EOS, ends assistant turns in the template)'."""
    ids = tokenizer(template.turn_end or "", add_special_tokens=False)["input_ids"]
    ends_turn = next((i for i in ids if i in template.stop_token_ids), None)
    names = []
    for i in template.stop_token_ids:
        origins = [name for name, yes in (("EOS", i == tokenizer.eos_token_id), ("ends assistant turns in the template", i == ends_turn)) if yes]
        names.append(f"{tokenizer.convert_ids_to_tokens(i)} ({', '.join(origins) or 'generation config'})")
    return names


def template_notes(template: ChatTemplate, tokenizer, cfg: DataConfig, report: DataReport) -> list[str]:
    """What the template analysis found and what was done about it, for the preflight."""
    notes = []
    if template.turn_end is not None:
        notes.append(f"assistant replies end with {template.turn_end!r}; replies run through its stop token, not what follows it")
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
    rebuilt = report.train.rebuilt + report.eval.rebuilt
    if rebuilt:
        notes.append(
            f"{rebuilt} replies rebuilt: the template does not write the reply itself, so it is trained as the model writes "
            "it after the inference prompt (the template's turn opening and ending around the reply)"
        )
    return notes
