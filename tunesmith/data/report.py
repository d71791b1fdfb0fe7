"""What data preparation reports: per-file load counts, per-split counts, lengths and checks.

Shared by every method's preparation (tunesmith.data.prepare, tunesmith.data.prepare_align) and
rendered by tunesmith.data.preflight.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class SplitReport:
    conversations: int = 0            # rows that reached tokenisation (before data.multi_turn: split)
    examples: int = 0                 # examples tokenised: one per row, or one per assistant turn with split
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count, after loading
    truncated: int = 0
    lengths: dict = field(default_factory=dict)        # token-length stats of kept examples
    trained_tokens: int = 0
    with_eos: int = 0                 # kept examples whose every trained turn (every response) contains a stop token
    template_checked: int = 0         # conversations whose rendering and mask were checked (all of them)
    problems: dict[str, int] = field(default_factory=dict)       # kind (tunesmith.data.masks.Problem) -> examples
    first_problem: dict[str, str] = field(default_factory=dict)  # kind -> 'where: detail' of its first example
    rebuilt: int = 0                  # replies rebuilt around the template (tunesmith.data.masks)
    with_tools: int = 0               # examples with tools, tool calls or tool results (tunesmith.data.tools)


@dataclass
class DataReport:
    kind: str = "conversation"        # conversation (sft), preference, unpaired or prompt: what the rows hold
    files: list[dict] = field(default_factory=list)    # one LoadReport per file, as dicts
    train: SplitReport = field(default_factory=SplitReport)
    eval: SplitReport = field(default_factory=SplitReport)
    template: str = ""
    stop_tokens: list[str] = field(default_factory=list)  # each with where it comes from: '<|im_end|> (end of turn)'
    template_notes: list[str] = field(default_factory=list)  # what the template analysis found and what was done about it
    max_length: int = 0
    truncation: str = ""
    first_example: str = ""           # rendered, trained tokens (responses) between ⟦ and ⟧
    sources: list[dict] = field(default_factory=list)  # a mixture's sources: path, task, weight, read, kept, train, eval
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)  # a mixture's task -> {train, eval} examples
    batching: dict = field(default_factory=dict)  # sft: how the training rows are batched (tunesmith.data.batching)
    token_weights: dict = field(default_factory=dict)  # sft with train.token_weights (tunesmith.data.token_weights)

    def to_dict(self) -> dict:
        return asdict(self)


def count(counts: dict[str, int], reason: str) -> None:
    # A plain dict, not a Counter: dataclasses.asdict rebuilds a Counter from its items, mangling it.
    counts[reason] = counts.get(reason, 0) + 1


def note_problem(report: SplitReport, problem, where: str) -> None:
    count(report.problems, problem.kind)
    report.first_problem.setdefault(problem.kind, f"{where}: {problem.detail}")


def length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }
