"""Tokenize and check the alignment methods' data: preference pairs, unpaired examples, prompts.

The counterpart of the SFT preparation in tunesmith.data.prepare, with the same guarantees. A
response's tokens are exactly the span SFT would train for that assistant turn: from the end of the
prompt rendered with the generation prompt to the end of the rendered turn, end-of-turn token
included. So the prompt a policy is trained on is the prompt it will see at inference, and every
response teaches the model to stop: the checks of tunesmith.data.masks run on every example, and a
failed one is counted like SFT's (tunesmith.data.prepare stops the run with the count and the first).

Rows handed to the trainers:
  preference -> {prompt_ids, chosen_ids, rejected_ids}
  unpaired   -> {prompt_ids, completion_ids, label}
  prompt     -> {prompt_ids, prompt (messages), **the row's other columns}
"""

from __future__ import annotations

from tunesmith.config import DataConfig
from tunesmith.data.masks import Problem, dropped, tokenize_conversation
from tunesmith.data.preference import PairExample, PromptExample, UnpairedExample, unpair
from tunesmith.data.report import SplitReport, count, length_stats, note_problem
from tunesmith.data.templates import ChatTemplate, TemplateError, prompt_ids
from tunesmith.errors import TunesmithError


class Failed(Exception):
    """An example failed a mask check: counted, and the run stops once every example is checked."""

    def __init__(self, problem: Problem):
        self.problem = problem


def tokenize_reply(template: ChatTemplate, tokenizer, prompt: list[dict], reply: str) -> tuple[list[int], list[int], bool]:
    """(prompt ids, reply ids, whether the reply was rebuilt) for one reply to `prompt`."""
    messages = prompt + [{"role": "assistant", "content": reply}]
    tok = tokenize_conversation(template, tokenizer, messages, trained_from=len(prompt))
    if tok.problem:
        raise Failed(tok.problem)
    first, last = tok.spans[-1]
    return tok.input_ids[:first], tok.input_ids[first:last], tok.rebuilt


def to_unpaired(examples: list) -> list[UnpairedExample]:
    """KTO reads unpaired examples; a preference pair gives two (chosen desirable, rejected not)."""
    out = []
    for example in examples:
        out += unpair(example) if isinstance(example, PairExample) else [example]
    return out


def tokenize_aligned(kind: str, examples: list, cfg: DataConfig, template: ChatTemplate, tokenizer, report: SplitReport) -> list[dict]:
    if kind == "unpaired":
        examples = to_unpaired(examples)
    report.conversations = report.examples = len(examples)
    stop_ids = set(template.stop_token_ids)
    rows, lengths = [], []
    for example in examples:
        report.template_checked += 1
        try:
            row = TOKENIZERS[kind](example, template, tokenizer, stop_ids, report)
        except TemplateError as err:
            raise TemplateError(f"{example.where}: {err}") from None
        except Failed as failed:
            note_problem(report, failed.problem, example.where)
            continue
        row = fit_length(row, kind, cfg, example.where, report)
        if row is None:
            continue
        responses = [row[key] for key in RESPONSE_KEYS[kind]]
        report.with_eos += all(any(t in stop_ids for t in ids) for ids in responses) if responses else 1
        report.trained_tokens += sum(len(ids) for ids in responses)
        lengths.append(len(row["prompt_ids"]) + max((len(ids) for ids in responses), default=0))
        rows.append(row)
    report.kept = len(rows)
    report.lengths = length_stats(lengths)
    return rows


RESPONSE_KEYS = {"preference": ("chosen_ids", "rejected_ids"), "unpaired": ("completion_ids",), "prompt": ()}


def _pair_row(example: PairExample, template, tokenizer, stop_ids: set[int], report: SplitReport) -> dict:
    prompt, chosen, chosen_rebuilt = tokenize_reply(template, tokenizer, example.prompt, example.chosen)
    prompt_r, rejected, rejected_rebuilt = tokenize_reply(template, tokenizer, example.prompt, example.rejected)
    if prompt != prompt_r:
        raise Failed(Problem("inconsistent", "the prompt renders differently before the chosen and the rejected response"))
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        _check_stop(ids, stop_ids, name, example.where, template)
    report.rebuilt += chosen_rebuilt + rejected_rebuilt
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def _unpaired_row(example: UnpairedExample, template, tokenizer, stop_ids: set[int], report: SplitReport) -> dict:
    prompt, completion, rebuilt = tokenize_reply(template, tokenizer, example.prompt, example.completion)
    _check_stop(completion, stop_ids, "completion", example.where, template)
    report.rebuilt += rebuilt
    return {"prompt_ids": prompt, "completion_ids": completion, "label": example.label}


def _prompt_row(example: PromptExample, template, tokenizer, stop_ids: set[int], report: SplitReport) -> dict:
    text = template.render(tokenizer, example.prompt, add_generation_prompt=True)
    problem = dropped(text, example.prompt, len(example.prompt), roles=("system", "user"))
    if problem:
        raise Failed(problem)
    return {"prompt_ids": prompt_ids(template, tokenizer, example.prompt), "prompt": example.prompt, **example.extra}


TOKENIZERS = {"preference": _pair_row, "unpaired": _unpaired_row, "prompt": _prompt_row}


def _check_stop(ids: list[int], stop_ids: set[int], name: str, where: str, template: ChatTemplate) -> None:
    if not any(t in stop_ids for t in ids):
        raise TemplateError(
            f"the {name} response has no end-of-turn/EOS token (stop ids {sorted(stop_ids)}), so the model would "
            f"never learn to stop. The template {template.name!r} must end each assistant turn with one of them."
        )


def fit_length(row: dict, kind: str, cfg: DataConfig, where: str, report: SplitReport) -> dict | None:
    """Apply data.truncation to a row longer than data.max_length; None when it is dropped (and counted)."""
    keys = RESPONSE_KEYS[kind]
    longest = max((len(row[k]) for k in keys), default=0)
    total = len(row["prompt_ids"]) + longest
    if total <= cfg.max_length:
        return row
    if cfg.truncation == "error":
        raise TunesmithError(
            f"{where}: {total} tokens (prompt + longest response) > data.max_length {cfg.max_length} "
            "(set data.truncation to drop, truncate_right or truncate_left)"
        )
    if cfg.truncation == "drop":
        count(report.dropped, "too_long")
        return None
    if cfg.truncation == "truncate_right":
        room = cfg.max_length - len(row["prompt_ids"])
        if room <= 0 or not keys:
            count(report.dropped, "prompt_too_long")
            return None
        row = {**row, **{k: row[k][:room] for k in keys}}
    else:  # truncate_left: keep the end of the prompt, the responses whole
        room = cfg.max_length - longest
        if room <= 0:
            count(report.dropped, "response_too_long")
            return None
        row = {**row, "prompt_ids": row["prompt_ids"][-room:]}
    report.truncated += 1
    return row


def mark_aligned(tokenizer, kind: str, row: dict) -> str:
    """The first example as text, each response's tokens between ⟦ and ⟧ after its prompt."""
    prompt = tokenizer.decode(row["prompt_ids"], skip_special_tokens=False)
    if kind == "prompt":
        return prompt
    parts = [prompt]
    for key in RESPONSE_KEYS[kind]:
        label = key.removesuffix("_ids") + (f" (label {row['label']})" if kind == "unpaired" else "")
        parts.append(f"--- {label} ---\n⟦{tokenizer.decode(row[key], skip_special_tokens=False)}⟧")
    return "\n".join(parts)
