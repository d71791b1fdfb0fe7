"""From the recipe's data section to tokenized train/eval rows, and the counts that prove nothing was lost.

Every row read is accounted for: kept, dropped with a reason, or truncated. The checks a run must pass
before step 1 live here too: every kept example has its end-of-turn token in the labels, and the
prompt rendered with the generation prompt tokenises to exactly the prefix used in training.
"""

from __future__ import annotations

import random
from dataclasses import asdict

from tunesmith.config import METHOD_FORMATS, DataConfig
from tunesmith.data.formats import Example
from tunesmith.data.load import load_examples
from tunesmith.data.prepare_align import mark_aligned, tokenize_aligned
from tunesmith.data.report import DataReport, SplitReport, count, length_stats
from tunesmith.data.templates import ChatTemplate, TemplateError, Tokenized, tokenize_conversation, tokenize_text
from tunesmith.errors import TunesmithError


# Prefix checks re-tokenise every prompt; beyond this many examples per split a sample is enough.
PREFIX_CHECK_LIMIT = 500


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
        return Tokenized(tok.input_ids[:max_length], tok.labels[:max_length], spans, tok.prompt_prefix_ok)
    spans = [(max(a - cut, 0), b - cut) for a, b in tok.spans if b > cut]
    return Tokenized(tok.input_ids[cut:], tok.labels[cut:], spans, tok.prompt_prefix_ok)


def tokenize_split(
    examples: list[Example], cfg: DataConfig, template: ChatTemplate, tokenizer, report: SplitReport
) -> list[dict]:
    stop_ids = set(template.stop_token_ids)
    rows, lengths = [], []
    report.examples = len(examples)
    for i, example in enumerate(examples):
        tok = tokenize_example(example, template, tokenizer, cfg.train_on_prompt)
        if example.messages is not None and i < PREFIX_CHECK_LIMIT:
            report.prefix_checked += 1
            if not tok.prompt_prefix_ok:
                report.prefix_mismatch.append(example.where)
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
        stop_tokens=[tokenizer.convert_ids_to_tokens(i) for i in template.stop_token_ids],
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
    if kind == "conversation":
        train_rows = tokenize_split(train_examples, cfg, template, tokenizer, report.train)
        eval_rows = tokenize_split(eval_examples, cfg, template, tokenizer, report.eval)
    else:
        train_rows = tokenize_aligned(kind, train_examples, cfg, template, tokenizer, report.train)
        eval_rows = tokenize_aligned(kind, eval_examples, cfg, template, tokenizer, report.eval)
    if not train_rows:
        raise TunesmithError(f"no training example left after filtering: dropped {dict(report.train.dropped)}")
    report.first_example = mark_trained(tokenizer, train_rows[0]) if kind == "conversation" else mark_aligned(tokenizer, kind, train_rows[0])
    mismatched = report.train.prefix_mismatch + report.eval.prefix_mismatch
    if mismatched:
        raise TemplateError(
            f"template check failed for {len(mismatched)} example(s), first {mismatched[0]}: the prompt rendered "
            "with add_generation_prompt does not tokenise to the prefix used in training, so inference would "
            f"see different tokens than training. Fix the template {template.name!r} (its generation prompt must "
            "match how assistant turns begin)."
        )
    return train_rows, eval_rows, report
