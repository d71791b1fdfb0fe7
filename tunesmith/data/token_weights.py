"""train.token_weights: a weight for every trained token of the SFT rows, and what the preflight shows of them.

A trained token's weight is `weight` where one of `words` or the `regex` matches it, 1 elsewhere, times its
row's `column` value; untrained tokens weigh 0. The loss is then sum(w * ce) / sum(w) over the trained tokens
of an optimiser step (tunesmith.methods.sft), so the weights say how much each token counts relative to the
others, not how large the loss is.

Words and phrases are matched in the text of each trained span (a response, by default), as whole words: "refund"
not inside "nonrefundable", "cat" not inside "catalog", whatever the tokenizer makes of them, at the start of a
reply as after a space. A Korean word may take its particles ("서울" in "서울에서"), and Chinese or Japanese,
written without spaces, match anywhere. The regex runs over the same text. Either way a token is weighted when
its characters overlap a match, so a word split into several tokens (or into the bytes of its characters) is
weighted whole, and nothing outside the trained spans is: a word in the prompt is not, unless
data.train_on_prompt trains the prompt.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

from tunesmith.config import TokenWeights, as_source
from tunesmith.data.load import read_rows
from tunesmith.data.formats import DataError
from tunesmith.errors import ConfigError

# tunesmith.data.prepare.split_turns names an assistant turn of a row this way, after the row's own place.
TURN_SUFFIX = re.compile(r" \(turn messages\[\d+\]\)$")


def weigh_rows(cfg: TokenWeights, tokenizer, entries: list, rows: list[dict]) -> dict:
    """Add "weights" (one float per token) to every row of `rows` (training rows of data.train `entries`);
    returns the preflight's figures: share of trained tokens weighted, matches per word, the first example marked."""
    patterns = {word: word_pattern(word) for word in cfg.words}
    regex = re.compile(cfg.regex) if cfg.regex else None
    column = row_values(cfg.column, entries) if cfg.column else None
    matches = dict.fromkeys(cfg.words, 0)
    for row in rows:
        up = [False] * len(row["input_ids"])
        for start, end in trained_spans(row["labels"]):
            text, offsets = span_offsets(tokenizer, row["input_ids"][start:end])
            for word, pattern in patterns.items():
                matches[word] += mark_matches(pattern, text, offsets, up, start)
            if regex is not None:
                mark_matches(regex, text, offsets, up, start)
        scale = column[TURN_SUFFIX.sub("", row["where"])] if column is not None else 1.0
        row["weights"] = [0.0 if label == -100 else scale * (cfg.weight if u else 1.0) for label, u in zip(row["labels"], up)]
    if column is not None and not any(w for row in rows for w in row["weights"]):
        raise ConfigError(f"train.token_weights.column: every training row has weight 0 in column {cfg.column!r}, so nothing would train; "
                          "give the rows to train a weight > 0")
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
        "zero_weight_rows": sum(not any(row["weights"]) for row in rows) if column is not None else 0,
        "first_example": mark_weighted(tokenizer, first) if first is not None else "",
        "first_example_where": TURN_SUFFIX.sub("", first["where"]) if first is not None else "",
    }


# Scripts written without spaces between words: a word of theirs matches anywhere.
UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def word_pattern(word: str) -> re.Pattern:
    """`word` as a whole word: no word character just before or after it. A Korean word may be followed by its
    particles (서울에서), so a Hangul end takes no boundary; a character of an unspaced script none either side."""
    def script(ch: str) -> str:
        name = unicodedata.name(ch, "")
        return "hangul" if name.startswith("HANGUL") else "unspaced" if name.startswith(UNSPACED) else "spaced"

    first, last = script(word[0]), script(word[-1])
    before = r"(?<!\w)" if re.match(r"\w", word[0]) and first != "unspaced" else ""
    after = r"(?!\w)" if re.match(r"\w", word[-1]) and last == "spaced" else ""
    return re.compile(before + re.escape(word) + after)


def mark_matches(pattern: re.Pattern, text: str, offsets: list[tuple[int, int]], up: list[bool], start: int) -> int:
    """Mark in `up` the tokens (from `start` on) whose characters overlap a match of `pattern` in their span's
    `text`; how many matches there were."""
    found = 0
    for m in pattern.finditer(text):
        found += 1
        for k, (a, b) in enumerate(offsets):
            if a < m.end() and b > m.start():
                up[start + k] = True
    return found


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
    tokenises back to `ids`, else what each token adds to the decoded text (the tokens of one multi-byte
    character's bytes all hold that character)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] == list(ids):
        return text, [tuple(o) for o in enc["offset_mapping"]]
    done, offsets, pending = "", [], []
    for k in range(len(ids)):
        longer = tokenizer.decode(ids[: k + 1], skip_special_tokens=False)
        if longer.startswith(done) and not longer.endswith("\ufffd"):
            for j in pending:  # the first bytes of the character this token completes
                offsets[j] = (len(done), len(longer))
            offsets.append((len(done), len(longer)))
            done, pending = longer, []
        else:
            pending.append(k)
            offsets.append((len(done), len(done)))
    return done, offsets


def row_values(column: str, entries: list) -> dict[str, float]:
    """where -> the number in `column` of every row of the entries' files; a missing or bad value stops the run."""
    values = {}
    for source in map(as_source, entries):
        text_cells = any(suffix.lower() in (".csv", ".tsv") for suffix in Path(str(source.path)).suffixes)
        for where, row in read_rows(source.path):
            if isinstance(row, DataError) or not isinstance(row, dict):
                continue  # counted (or refused) by loading already
            value = row.get(column)
            if text_cells and isinstance(value, str):  # every CSV cell is text: the number is read from it
                value = as_number(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DataError(where, column, f"train.token_weights.column: expected a number >= 0, found {value!r}", "bad_weight",
                                hint="give every row a weight in that column, or remove train.token_weights.column")
            values[where] = float(value)
    return values


def as_number(text: str) -> float | str:
    """The number a CSV cell holds, or the text itself when it holds none."""
    try:
        return float(text)
    except ValueError:
        return text


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
