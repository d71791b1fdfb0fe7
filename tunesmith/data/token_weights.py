"""train.token_weights: a weight for every trained token of the SFT rows, and what the preflight shows of them.

A trained token's weight is `weight` where one of `words` or the `regex` matches it, 1 elsewhere, times its
row's `column` value; untrained tokens weigh 0. The loss is then sum(w * ce) / sum(w) over the trained tokens
of an optimiser step (tunesmith.methods.sft), so the weights say how much each token counts relative to the
others, not how large the loss is.

Words are matched as whole token sequences, not single ids: " Seoul" may be two tokens, and only both together
are that word. A phrase tokenises differently at the start of a text and after a space (byte-level BPE's "Ġ"),
so both sequences are looked for. The regex runs over the text of each trained span (a response, by default),
and a token is weighted when its characters overlap a match.
"""

from __future__ import annotations

import math
import re

from tunesmith.config import TokenWeights, as_source
from tunesmith.data.load import read_rows
from tunesmith.data.formats import DataError

# tunesmith.data.prepare.split_turns names an assistant turn of a row this way, after the row's own place.
TURN_SUFFIX = re.compile(r" \(turn messages\[\d+\]\)$")


def weigh_rows(cfg: TokenWeights, tokenizer, entries: list, rows: list[dict]) -> dict:
    """Add "weights" (one float per token) to every row of `rows` (training rows of data.train `entries`);
    returns the preflight's figures: share of trained tokens weighted, matches per word, the first example marked."""
    sequences = {word: phrase_sequences(tokenizer, word) for word in cfg.words}
    pattern = re.compile(cfg.regex) if cfg.regex else None
    column = row_values(cfg.column, entries) if cfg.column else None
    matches = dict.fromkeys(cfg.words, 0)
    for row in rows:
        up = [False] * len(row["input_ids"])
        for word, seqs in sequences.items():
            matches[word] += mark_sequences(row, seqs, up)
        if pattern is not None:
            mark_regex(row, pattern, tokenizer, up)
        scale = column[TURN_SUFFIX.sub("", row["where"])] if column is not None else 1.0
        row["weights"] = [0.0 if label == -100 else scale * (cfg.weight if u else 1.0) for label, u in zip(row["labels"], up)]
    trained = sum(label != -100 for row in rows for label in row["labels"])
    weighted = sum(w != 1.0 for row in rows for w, label in zip(row["weights"], row["labels"]) if label != -100)
    first = next((row for row in rows if any(w != 1.0 for w, label in zip(row["weights"], row["labels"]) if label != -100)), None)
    return {
        "share": round(weighted / max(trained, 1), 4),
        "weighted_tokens": weighted,
        "trained_tokens": trained,
        "weight": cfg.weight if cfg.words or cfg.regex else None,
        "words": matches,
        "regex": cfg.regex,
        "column": cfg.column,
        "first_example": mark_weighted(tokenizer, first) if first is not None else "",
        "first_example_where": TURN_SUFFIX.sub("", first["where"]) if first is not None else "",
    }


def phrase_sequences(tokenizer, phrase: str) -> list[list[int]]:
    """The token sequences of a phrase as written and after a space, without repeats."""
    seqs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (phrase, " " + phrase)]
    return [list(s) for s in dict.fromkeys(map(tuple, seqs)) if s]


def mark_sequences(row: dict, seqs: list[list[int]], up: list[bool]) -> int:
    """Mark in `up` every occurrence of any of `seqs` that lies wholly among the trained tokens; how many there were."""
    ids, labels, found = row["input_ids"], row["labels"], 0
    for seq in seqs:
        n = len(seq)
        for at in range(len(ids) - n + 1):
            if ids[at : at + n] == seq and all(label != -100 for label in labels[at : at + n]):
                up[at : at + n] = [True] * n
                found += 1
    return found


def mark_regex(row: dict, pattern: re.Pattern, tokenizer, up: list[bool]) -> None:
    """Mark in `up` the trained tokens whose characters overlap a match of `pattern` in their span's text."""
    for start, end in trained_spans(row["labels"]):
        text, offsets = span_offsets(tokenizer, row["input_ids"][start:end])
        for m in pattern.finditer(text):
            for k, (a, b) in enumerate(offsets):
                if a < m.end() and b > m.start():
                    up[start + k] = True


def trained_spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of trained labels."""
    spans, start = [], None
    for i, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = i
        elif label == -100 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def span_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of `ids` and each token's (start, end) characters in it: the tokenizer's offsets when the text
    tokenises back to `ids`, else what each token adds to the decoded text (a token that ends inside a
    multi-byte character adds nothing; the one that completes it holds the character)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] == list(ids):
        return text, [tuple(o) for o in enc["offset_mapping"]]
    done, offsets = "", []
    for k in range(len(ids)):
        longer = tokenizer.decode(ids[: k + 1], skip_special_tokens=False)
        if longer.startswith(done) and not longer.endswith("\ufffd"):
            offsets.append((len(done), len(longer)))
            done = longer
        else:
            offsets.append((len(done), len(done)))
    return done, offsets


def row_values(column: str, entries: list) -> dict[str, float]:
    """where -> the number in `column` of every row of the entries' files; a missing or bad value stops the run."""
    values = {}
    for source in map(as_source, entries):
        for where, row in read_rows(source.path):
            if isinstance(row, DataError) or not isinstance(row, dict):
                continue  # counted (or refused) by loading already
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DataError(where, column, f"train.token_weights.column: expected a number >= 0, found {value!r}", "bad_weight",
                                hint="give every row a weight in that column, or remove train.token_weights.column")
            values[where] = float(value)
    return values


def mark_weighted(tokenizer, row: dict) -> str:
    """The example as text with its weighted tokens between ⟪ and ⟫, each run followed by its weight."""
    pieces, start = [], 0
    ids, weights, labels = row["input_ids"], row["weights"], row["labels"]
    key = [None if label == -100 else w for w, label in zip(weights, labels)]
    for i in range(1, len(ids) + 1):
        if i == len(ids) or key[i] != key[start]:
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            pieces.append(f"⟪{text}⟫×{key[start]:g}" if key[start] not in (None, 1.0) else text)
            start = i
    return "".join(pieces)
