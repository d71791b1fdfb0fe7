"""Reward functions for GRPO (and anything else that scores replies): built-ins, reward-model runs, yours.

A reward function takes the prompts, the replies and the data columns of their rows, and returns one
number per reply:

    def my_reward(prompts: list[list[dict]], completions: list[str], **columns) -> list[float]:
        # prompts[i]: the conversation the reply answers ({role, content} messages, ending with a user turn)
        # completions[i]: the reply text
        # columns["answer"][i]: the value of column `answer` in the row of prompt i (every column is passed)
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, columns["answer"])]

Put it in a module or a file and name it in the recipe:

    grpo:
      rewards:
        - {type: python, function: my_package.rewards:my_reward}     # importable module
        - {type: python, function: rewards.py:my_reward, weight: 0.5}  # a file, relative to the working directory

Return None for a reply a function cannot judge; GRPO then ignores that function for it. Built-ins
(`type:` in the recipe): exact_match (against a column), regex, length, reward_model (a reward run).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import RewardFunction
from tunesmith.errors import TunesmithError
from tunesmith.eval.generate import cut_at_stop

RewardFn = Callable[..., list]


def exact_match(column: str, first_line: bool = True) -> RewardFn:
    """1 when the reply equals the row's `column` after normalisation (case, spaces, outer punctuation), else 0."""
    from tunesmith.eval.metrics import normalize

    def reward(prompts, completions, **columns):
        if column not in columns:
            raise TunesmithError(f"grpo reward exact_match: the data has no column {column!r} (columns: {', '.join(columns)})")
        return [
            float(normalize(c, first_line=first_line) == normalize(str(ref), first_line=first_line))
            for c, ref in zip(completions, columns[column])
        ]

    reward.__name__ = f"exact_match_{column}"
    return reward


def regex(pattern: str) -> RewardFn:
    """1 when the pattern is found in the reply (re.search), else 0: a format check."""
    compiled = re.compile(pattern)

    def reward(prompts, completions, **columns):
        return [float(compiled.search(c) is not None) for c in completions]

    reward.__name__ = "regex"
    return reward


def length(max_chars: int) -> RewardFn:
    """0 up to max_chars, then minus 1 per 100 characters beyond: a penalty for rambling."""

    def reward(prompts, completions, **columns):
        return [-max(0, len(c) - max_chars) / 100 for c in completions]

    reward.__name__ = "length"
    return reward


def reward_model(path: str) -> RewardFn:
    """The score of a `method: reward` run, computed in that run's own template."""
    from tunesmith.models.reward import load_reward_model, score

    model = load_reward_model(path)

    def reward(prompts, completions, **columns):
        return score(model, prompts, completions)

    reward.__name__ = f"reward_model_{Path(path).name}"
    return reward


def python_function(spec: str) -> RewardFn:
    """'package.module:name' or 'path/to/file.py:name'."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise TunesmithError(f"grpo reward function {spec!r}: expected 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise TunesmithError(f"grpo reward function {spec!r}: file {target} not found")
        module_name = f"tunesmith_user_rewards_{path.stem}"
        spec_ = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[module_name] = module  # pickling (multiprocessing, checkpoints) finds it again
        spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise TunesmithError(f"grpo reward function {spec!r}: cannot import {target}: {err}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TunesmithError(f"grpo reward function {spec!r}: {target} has no function {name!r}")
    return fn


def build(spec: RewardFunction) -> RewardFn:
    """The callable a recipe's reward entry describes."""
    if spec.type == "exact_match":
        return exact_match(spec.column, spec.first_line)
    if spec.type == "regex":
        return regex(spec.pattern)
    if spec.type == "length":
        return length(spec.max_chars)
    if spec.type == "reward_model":
        return reward_model(spec.path)
    return python_function(spec.function)


def for_trl(fn: RewardFn, stop_texts: list[str] = ()) -> RewardFn:
    """Adapt our signature to TRL's: it passes conversational replies as [{role, content}] lists, extra
    keyword arguments (trainer state, logging hooks) that are not data columns, and the columns it
    reserves under the names rows_for_trl gave them. Replies are cut at the template's stop texts
    (turn-end markers that are no token), as every engine cuts them."""

    def reward(prompts, completions, **kwargs):
        texts = [cut_at_stop(c[-1]["content"] if isinstance(c, list) else c, list(stop_texts)) for c in completions]
        columns = {RENAMED.get(k, k): v for k, v in kwargs.items() if k not in TRL_KWARGS}
        return fn(prompts, texts, **columns)

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward


def rows_for_trl(rows: list[dict]) -> list[dict]:
    """TRL's GRPOTrainer keeps a `completion` column from the reward functions (it names its own replies
    so): hand it over under another name, which for_trl turns back."""
    aside = {v: k for k, v in RENAMED.items()}
    return [{aside.get(k, k): v for k, v in row.items()} for row in rows]


# Keyword arguments TRL's GRPOTrainer adds beside the data columns.
TRL_KWARGS = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments", "prompt_ids"}
# Data columns TRL would not pass on under their own name: the name they travel under -> theirs.
RENAMED = {"data_completion": "completion"}
