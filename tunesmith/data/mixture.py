"""Mixtures: data.train (and data.eval) entries written as sources, `{path, task, weight, format, columns}`.

Each source is read with its own format and column map. Its `task` tags every example, so one model learns
several tasks and is told which one is asked: `[TASK: sentiment] ` before the first user message (or the
text), or the tag as a line of the system message (data.task_tag: system); evaluation and serving then give
the same tag. Its `weight` resamples its training examples after the eval split (so no copy of a held-out
example is trained on): whole copies, then a seeded sample without replacement for the fraction, so a
source of n examples gives floor(w) * n + round((w - floor(w)) * n).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from tunesmith.config import DataSource
from tunesmith.data.formats import Example, with_system


def tag_text(template: str, task: str) -> str:
    """data.task_template with the task's name: '[TASK: sentiment]'."""
    return template.replace("{task}", task)


def tagged(example, tag: str, mode: str):
    """The example with its task tag: an SFT Example, or an alignment example (whose `prompt` holds the messages)."""
    if isinstance(example, Example):
        if example.messages is None:
            return replace(example, text=f"{tag} {example.text}")
        trained_from = example.trained_from + _added(example.messages, mode) if example.trained_from else 0
        return replace(example, messages=tag_messages(example.messages, tag, mode), trained_from=trained_from)
    return replace(example, prompt=tag_messages(example.prompt, tag, mode))


def tag_messages(messages: list[dict], tag: str, mode: str) -> list[dict]:
    if mode == "system":
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n{tag}"}, *messages[1:]]
        return with_system(messages, tag)
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return [*messages[:first], {**messages[first], "content": f"{tag} {messages[first]['content']}"}, *messages[first + 1 :]]


def _added(messages: list[dict], mode: str) -> int:
    """Messages the tag adds in front (a new system message), which moves prompt_completion's first trained turn."""
    return int(mode == "system" and (not messages or messages[0]["role"] != "system"))


def weighted(examples: list, weight: float, seed: str) -> list:
    whole = math.floor(weight)
    extra = round((weight - whole) * len(examples))
    picked = sorted(random.Random(seed).sample(range(len(examples)), extra))
    return examples * whole + [examples[i] for i in picked]


def source_entry(source: DataSource, loaded: dict) -> dict:
    """One row of the preflight's mixture table: the source, its load counts, then its train/eval counts."""
    return {"path": source.path, "task": source.task, "weight": source.weight, "read": loaded["read"], "kept": loaded["kept"], "train": 0, "eval": 0}


def count_tasks(sources: list[dict]) -> dict[str, dict[str, int]]:
    tasks: dict[str, dict[str, int]] = {}
    for s in sources:
        counts = tasks.setdefault(s["task"] or "(no task)", {"train": 0, "eval": 0})
        counts["train"] += s["train"]
        counts["eval"] += s["eval"]
    return tasks
