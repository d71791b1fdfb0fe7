"""Rows in, for every data verb: read with the training loader's readers, bad rows stopped or counted, and the
text of each row found by --field (columns named by the user) or by the row's training format.

A row is a plain dict; `Row` adds where it came from (`train.jsonl:12`, as the loader names it) and its
position among the rows read, which seeds its random draws, so that a result never depends on batching,
chunking or an interrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import FORMATS, TOOL_MESSAGE_ROLES, TOOL_SHAREGPT_ROLES, DataError, detect_format, type_name
from tunesmith.data.load import read_rows
from tunesmith.errors import TunesmithError

ON_BAD_ROW_HINT = "pass --on-bad-row drop to skip such rows (they are counted in the report)"

# The formats a row's text is found by when no --field is given: the training formats, then preference pairs.
TEXT_FORMATS = (*FORMATS, "preference")
# Per format: the fields that hold the input (what a person wrote or asked) and those that hold the answer.
INPUT_FIELDS = {
    "alpaca": ("instruction", "input"), "messages": ("messages",), "sharegpt": ("conversations",),
    "prompt_completion": ("prompt",), "question_answer": ("question",), "text": ("text",), "preference": ("prompt",),
}
ANSWER_FIELDS = {
    "alpaca": ("output",), "messages": (), "sharegpt": (), "prompt_completion": ("completion",),
    "question_answer": ("answer",), "text": (), "preference": ("chosen", "rejected"),
}
# Message lists: (role key, content key, the roles of each side). A list's system message is neither side.
MESSAGE_KEYS = {"role": ("role", "content"), "from": ("from", "value")}
INPUT_ROLES = {"user", "human"}
ANSWER_ROLES = {"assistant", "gpt"}

FieldPath = tuple  # where a string sits in a row: ('prompt',) or ('messages', 2, 'content')


@dataclass
class Row:
    index: int      # 0-based among the rows read (bad rows included): seeds this row's draws
    where: str      # 'train.jsonl:12'
    data: dict


@dataclass
class Counts:
    """What a step did to the rows it saw; merged across chunks and resumed runs by adding."""

    counters: dict[str, int] = field(default_factory=dict)   # verb-specific: 'changed', 'rule:liaison', ...
    dropped: dict[str, int] = field(default_factory=dict)    # reason -> rows
    first_errors: list[str] = field(default_factory=list)    # the first messages of dropped rows
    examples: list[dict] = field(default_factory=list)       # a few before/after samples for the report

    SHOWN = 5

    def add(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.first_errors) < self.SHOWN:
            self.first_errors.append(message)

    def example(self, sample: dict) -> None:
        if len(self.examples) < self.SHOWN:
            self.examples.append(sample)

    def merge(self, other: Counts) -> None:
        for key, n in other.counters.items():
            self.add(key, n)
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        self.first_errors += other.first_errors[: self.SHOWN - len(self.first_errors)]
        self.examples += other.examples[: self.SHOWN - len(self.examples)]

    def to_dict(self) -> dict:
        return {"counters": self.counters, "dropped": self.dropped, "first_errors": self.first_errors, "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict) -> Counts:
        return cls(dict(data["counters"]), dict(data["dropped"]), list(data["first_errors"]), list(data["examples"]))


def is_recipe(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def read_input(path: str, on_bad_row: str, counts: Counts, limit: int | None = None, split: str = "train") -> list[Row]:
    """The rows of any file the training loader reads; a bad row raises, or is counted in `counts` with drop.
    `limit` keeps the first N rows read (bad ones included, so --limit 10 reads 10 lines). A recipe gives the
    examples of its data section's `split` (see recipe_rows)."""
    if is_recipe(path):
        return recipe_rows(path, split, counts)[:limit]
    rows = []
    for index, (where, row) in enumerate(read_rows(path)):
        if limit is not None and index >= limit:
            break
        if isinstance(row, DataError):
            bad(row, on_bad_row, counts)
            continue
        rows.append(Row(index, where, row))
    return rows


def recipe_rows(path: str, split: str, counts: Counts) -> list[Row]:
    """The train or eval examples of a recipe, exactly as training reads and splits them (each source with its
    format and columns, data.eval files or the data.eval_split held out with the recipe's seed; before weights),
    as rows of their format: {messages} or {text}, {prompt, chosen, rejected}, {prompt, completion}. Bad rows
    follow the recipe's data.on_bad_row and are counted."""
    from tunesmith.config import METHOD_FORMATS, load_recipe
    from tunesmith.data.prepare import DataReport, held_out, read_split

    recipe = load_recipe(path)
    cfg, formats, report = recipe.data, METHOD_FORMATS[recipe.method], DataReport()
    if cfg.eval:
        examples = read_split(cfg.train if split == "train" else cfg.eval, cfg, report, formats)
    else:
        train = read_split(cfg.train, cfg, report, formats)
        train, held = held_out(train, cfg, recipe.train.seed) if cfg.eval_split else (train, [])
        examples = train if split == "train" else held
    for loaded in report.files:
        for reason, n in loaded["dropped"].items():
            counts.dropped[reason] = counts.dropped.get(reason, 0) + n
        counts.first_errors += loaded["first_errors"][: Counts.SHOWN - len(counts.first_errors)]
    return [Row(i, e.where, example_row(e)) for i, e in enumerate(examples)]


def example_row(example) -> dict:
    """A loaded example as a row of its format, for the verbs that read recipes."""
    from tunesmith.data.formats import Example
    from tunesmith.data.preference import PairExample, UnpairedExample

    if isinstance(example, Example):
        return {"messages": example.messages} if example.messages is not None else {"text": example.text}
    if isinstance(example, PairExample):
        return {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
    if isinstance(example, UnpairedExample):
        return {"prompt": example.prompt, "completion": example.completion, "label": example.label}
    return {"messages": example.prompt}


def bad(err: DataError, on_bad_row: str, counts: Counts) -> None:
    """A bad row: the error (on_bad_row error) or a counted drop (drop)."""
    if on_bad_row == "error":
        raise DataError(err.where, err.field, err.problem, err.reason, hint=ON_BAD_ROW_HINT) from None
    counts.drop(err.reason, str(err))


def parse_columns(text: str | None) -> dict[str, str]:
    """--columns prompt=ticket,completion=label -> {'prompt': 'ticket', 'completion': 'label'} (as data.columns)."""
    from tunesmith.data.formats import FIELDS

    columns = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not name or not column:
            raise TunesmithError(f"--columns {text}: expected field=column pairs, e.g. prompt=ticket,completion=label")
        if name not in FIELDS:
            raise TunesmithError(f"--columns: unknown field {name!r}; fields are: {', '.join(FIELDS)}")
        columns[name] = column
    return columns


@dataclass
class TextFields:
    """Which strings of a row a verb reads or rewrites.

    fields: the columns named by --field (a text column, or a message list whose user and assistant turns are
    its text); empty: the fields of the row's format (detected as training detects it, renamed by columns).
    side: 'input' (what the user wrote: prompt, instruction, user turns), 'answer', or 'all'.
    """

    fields: list[str]
    columns: dict[str, str]
    side: str = "all"
    system: bool = False    # also a message list's system message (translate does; the other verbs read the turns)

    def slots(self, row: dict, where: str) -> list[tuple[FieldPath, str]]:
        """(path, text) of every string of the chosen side, in row order; a row without them is a DataError."""
        if self.fields:
            names, fmt = self.fields, None
        else:
            fmt = detect_format(row, self.columns, where, TEXT_FORMATS)
            wanted = {"input": INPUT_FIELDS[fmt], "answer": ANSWER_FIELDS[fmt]}.get(self.side, INPUT_FIELDS[fmt] + ANSWER_FIELDS[fmt])
            names = [self.columns.get(name, name) for name in wanted]
        found = []
        for name in names:
            if name not in row:
                if fmt == "alpaca" and name == self.columns.get("input", "input"):
                    continue  # alpaca's input is optional
                raise DataError(where, name, f"missing (the row has: {', '.join(row) or 'no keys'})", "missing_field")
            found += self._strings(row[name], (name,), where, optional=fmt == "alpaca" and name == self.columns.get("input", "input"))
        return found

    def _strings(self, value, path: FieldPath, where: str, optional: bool = False) -> list[tuple[FieldPath, str]]:
        if isinstance(value, str):
            return [(path, value)]
        if value is None and optional:
            return []
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            return self._turns(value, path, where)
        problem = f"expected text or a list of messages, found {type_name(value)}"
        raise DataError(where, _shown(path), problem, "wrong_type")

    def _turns(self, messages: list[dict], path: FieldPath, where: str) -> list[tuple[FieldPath, str]]:
        roles = {"input": INPUT_ROLES, "answer": ANSWER_ROLES}.get(self.side, INPUT_ROLES | ANSWER_ROLES) | ({"system"} if self.system else set())
        found = []
        for i, message in enumerate(messages):
            keys = next((MESSAGE_KEYS[k] for k in MESSAGE_KEYS if k in message), None)
            if keys is None:
                raise DataError(where, _shown((*path, i)), "expected a message with role and content (or from and value)", "wrong_type")
            role_key, content_key = keys
            role = message[role_key]
            # Tool calls and results are no text to rewrite: their JSON must stay as the tools' schemas want it.
            if role not in TOOL_SHAREGPT_ROLES and role not in TOOL_MESSAGE_ROLES:
                raise DataError(where, _shown((*path, i, role_key)), f"unknown role {role!r}", "unknown_role")
            if role in roles and not (message.get("tool_calls") and not message.get(content_key)):
                content = message.get(content_key)
                if not isinstance(content, str):
                    raise DataError(where, _shown((*path, i, content_key)), f"expected a string, found {type_name(content)}", "wrong_type")
                found.append(((*path, i, content_key), content))
        return found

    def text(self, row: dict, where: str) -> str:
        """The chosen strings joined by newlines: what dedup hashes and cluster embeds."""
        return "\n".join(text for _, text in self.slots(row, where))


def replaced(row: dict, changes: dict[FieldPath, str]) -> dict:
    """A copy of `row` with the strings at `changes`' paths replaced; containers on the way are copied, the rest shared."""
    out = dict(row)
    for path, text in changes.items():
        node = out
        for i, key in enumerate(path[:-1]):
            child = node[key]
            node[key] = child = list(child) if isinstance(child, list) else dict(child)
            node = child
        node[path[-1]] = text
    return out


def _shown(path: FieldPath) -> str:
    """('messages', 2, 'content') -> 'messages[2].content', as the loader names fields."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def row_id(row: Row) -> str:
    """What a derived row's `augmented_from` names: the row's `id`, else its place in the input."""
    if row.data.get("id") not in (None, ""):
        return str(row.data["id"])
    return row.where


def iter_batches(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
