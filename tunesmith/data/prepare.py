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
from collections import Counter
from dataclasses import asdict

from tunesmith.config import METHOD_FORMATS, DataConfig, as_source
from tunesmith.data.formats import Example
from tunesmith.data.load import load_examples, read_rows
from tunesmith.data.checks import check_problems, check_turn_end, stop_token_names, template_notes
from tunesmith.data.masks import Tokenized, tokenize_conversation, tokenize_text
from tunesmith.data.mixture import count_tasks, source_entry, tag_text, tagged, weighted
from tunesmith.data.prepare_align import mark_aligned, tokenize_aligned
from tunesmith.data.report import DataReport, SplitReport, count, length_stats, note_problem
from tunesmith.data.templates import ChatTemplate, TemplateError
from tunesmith.data.tools import uses_tools
from tunesmith.errors import TunesmithError


def read_sources(
    entries: list, cfg: DataConfig, report: DataReport, formats: tuple[str, ...] = METHOD_FORMATS["sft"], split: str = "train"
) -> list[list]:
    """The examples of each entry (of data.train or data.eval), read with the entry's format and columns and tagged
    with its task (tunesmith.data.mixture); a mixture's sources are listed in report.sources."""
    per_source = []
    for source in map(as_source, entries):
        examples, load_report = load_examples(
            source.path, fmt=source.format or cfg.format, columns=cfg.columns if source.columns is None else source.columns,
            system_prompt=cfg.system_prompt, on_bad_row=cfg.on_bad_row, formats=formats,
        )
        report.files.append(asdict(load_report))
        if source.task:
            examples = [tagged(e, tag_text(cfg.task_template, source.task), cfg.task_tag) for e in examples]
        if cfg.mixture:
            report.sources.append(source_entry(source, report.files[-1]) | {"split": split})
        per_source.append(examples)
    return per_source


def read_split(entries: list, cfg: DataConfig, report: DataReport, formats: tuple[str, ...] = METHOD_FORMATS["sft"]) -> list:
    """Every example of the entries, tagged with their tasks, as read (weights are applied by read_mixture)."""
    return [e for examples in read_sources(entries, cfg, report, formats) for e in examples]


def split_eval(examples: list, share: float, seed: int, groups: list[str] | None = None) -> tuple[list, list]:
    """(train, eval): a seeded share held out. With `groups` (a key per example), whole groups are held out,
    so that a row and its augmented variants never fall on both sides."""
    n_eval = max(1, round(len(examples) * share))
    if groups is None:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        held = set(order[:n_eval])
        return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
    keys, sizes = list(dict.fromkeys(groups)), Counter(groups)
    random.Random(seed).shuffle(keys)
    held_keys, n = set(), 0
    for key in keys:
        if n >= n_eval:
            break
        held_keys.add(key)
        n += sizes[key]
    return [e for e, g in zip(examples, groups) if g not in held_keys], [e for e, g in zip(examples, groups) if g in held_keys]


def held_out(items: list, cfg: DataConfig, seed: int, example_of=lambda item: item) -> tuple[list, list]:
    """data.eval_split of the examples read from data.train (items holding them, in order), as training holds it
    out: by augmented groups when the rows come from `tunesmith data augment` (they carry augmented_from)."""
    return split_eval(items, cfg.eval_split, seed, augmented_groups(cfg.train, [example_of(item) for item in items]))


def augmented_groups(entries: list, examples: list) -> list[str] | None:
    """Each example's group: the row it was augmented from (augmented_from), else its own id or place; None when
    no row of the entries carries augmented_from (then every example is its own group, as before)."""
    rows = {where: row for source in map(as_source, entries) for where, row in read_rows(source.path) if isinstance(row, dict)}
    if not any("augmented_from" in row for row in rows.values()):
        return None
    keys = []
    for e in examples:
        row = rows.get(e.where, {})
        keys.append(str(row.get("augmented_from") or row.get("id") or e.where))
    return keys


def read_mixture(cfg: DataConfig, report: DataReport, seed: int, formats: tuple[str, ...]) -> tuple[list, list]:
    """Train and eval examples: the eval files, or data.eval_split held out of the training rows; then each
    training source resampled by its weight, so that no copy of a held-out example is trained on."""
    # (source index, example): the split keeps each example's source, for its weight and the counts.
    train = [(i, e) for i, examples in enumerate(read_sources(cfg.train, cfg, report, formats)) for e in examples]
    if cfg.eval:
        evals = [(i, e) for i, examples in enumerate(read_sources(cfg.eval, cfg, report, formats, "eval")) for e in examples]
    elif cfg.eval_split > 0:
        train, evals = held_out(train, cfg, seed, example_of=lambda pair: pair[1])
    else:
        evals = []
    per_source = [weighted([e for k, e in train if k == i], source.weight, f"{seed}:{i}") for i, source in enumerate(cfg.sources("train"))]
    if cfg.mixture:
        for split in ("train", "eval"):
            for i, entry in enumerate(s for s in report.sources if s["split"] == split):
                if split == "train":
                    entry["train"] = len(per_source[i])
                if split == "eval" or not cfg.eval:  # the held-out share of a training source, or an eval source
                    entry["eval"] = sum(k == i for k, _ in evals)
        report.tasks = count_tasks(report.sources)
    return [e for examples in per_source for e in examples], [e for _, e in evals]


def split_turns(examples: list[Example]) -> list[Example]:
    """data.multi_turn: split: one example per trained assistant turn, the conversation before it as its prompt."""
    out = []
    for example in examples:
        messages = example.messages or []
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k >= example.trained_from]
        if len(turns) <= 1:
            out.append(example)
            continue
        out += [Example(messages[: k + 1], None, f"{example.where} (turn messages[{k}])", trained_from=k, tools=example.tools) for k in turns]
    return out


def tokenize_example(example: Example, template: ChatTemplate, tokenizer, train_on_prompt: bool) -> Tokenized:
    try:
        if example.text is not None:
            return tokenize_text(template, tokenizer, example.text)
        return tokenize_conversation(template, tokenizer, example.messages, train_on_prompt, example.trained_from, example.tools)
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
            report.with_tools += uses_tools(example.messages, example.tools)
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
        rows.append({"input_ids": tok.input_ids, "labels": tok.labels, "where": example.where})
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
    train_examples, eval_examples = read_mixture(cfg, report, seed, METHOD_FORMATS[method])
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
