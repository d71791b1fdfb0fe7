"""`tunesmith data augment METHOD`: a set grown with variants of its rows.

    tunesmith data augment obfuscate-ko reviews.jsonl --field text --per-row 2 --out grown.jsonl
    tunesmith data augment obfuscate-ko reviews.jsonl --field text --pairs --eval-share 0.1 --out pairs.jsonl --eval-out eval.jsonl

A variant is its source row with the chosen text rewritten; every other column (the label, the answer) is
kept, and it carries `augmented_from` (the source row's id column, else its file:line) and `augmentation`
(the method). The output holds each source row followed by its variants; with --pairs, only
(rewritten, original) pairs as {prompt, completion}, ready for `data.format: prompt_completion` (a
restoration model). A variant equal to its source or to an earlier variant, or an empty one, is counted
and left out.

How many: --per-row N variants of every row, or --ratio R new rows per row read (1.5: one for every row,
a second for a seeded half).

Leakage: rows of an eval split (a `split` column saying eval, validation, test, ...; or --eval-share held
out here, by source row, before any variant is made) go with their variants to --eval-out, never to --out.
"""

from __future__ import annotations

import math
import random
import sys

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.hangul import DEFAULT_RATES, RULES, hangul_share, obfuscate
from tunesmith.curate.rows import Counts, Row, TextFields, bad, replaced, row_id
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError

EVAL_SPLITS = ("eval", "evaluation", "validation", "valid", "val", "test", "heldout", "held_out", "dev")
TRIES = 3   # draws per variant before an unchanged one is given up (counted)


def obfuscate_ko(texts: list[str], rng: random.Random, settings: dict, counts: Counts) -> list[str]:
    fired: dict[str, int] = {}
    out = [obfuscate(text, settings["rules"], rng, fired) for text in texts]
    for rule, n in fired.items():
        counts.add(f"rule {rule}", n)
    return out


# method -> rewrite(texts of one row, rng, settings, counts) -> the texts of one variant
METHODS = {"obfuscate-ko": obfuscate_ko}


def parse_rules(text: str | None) -> dict[str, float]:
    """--rules liaison=0.8,add_final=0 over the defaults."""
    rates = dict(DEFAULT_RATES)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if name not in RULES:
            raise TunesmithError(f"--rules: unknown rule {name!r}; rules: {', '.join(RULES)}")
        try:
            rate = float(value) if sep else None
        except ValueError:
            rate = None
        if rate is None or not 0 <= rate <= 1:
            raise TunesmithError(f"--rules {item}: give each rule a probability from 0 to 1, e.g. {name}=0.3")
        rates[name] = rate
    return rates


def variants_wanted(n: int, per_row: int | None, ratio: float | None, seed: int) -> list[int]:
    """How many variants each of n rows gets: --per-row for all, or --ratio's whole part for all plus one for a
    seeded sample of round(fraction * n) rows."""
    if per_row is not None:
        return [per_row] * n
    whole = math.floor(ratio)
    extra = set(random.Random(f"{seed}:ratio").sample(range(n), round((ratio - whole) * n)))
    return [whole + (i in extra) for i in range(n)]


def augment(method: str, input: str, out: str, eval_out: str | None, fields: TextFields, per_row: int | None, ratio: float | None,
            pairs: bool, split_column: str, eval_share: float | None, id_field: str, settings: dict, overwrite: bool,
            on_bad_row: str, limit: int | None, seed: int, batch_size: int, chunk_rows: int) -> dict:
    if (per_row is None) == (ratio is None):
        raise TunesmithError("augment: give --per-row N or --ratio R (new rows per row read)")
    if eval_share is not None and not 0 < eval_share < 1:
        raise TunesmithError(f"--eval-share: {eval_share} is not a share between 0 and 1")
    outputs = {"out": Output(out)} | ({"eval_out": Output(eval_out)} if eval_out else {})
    job_settings = {"method": method, "fields": fields.fields or "the format's input", "columns": fields.columns, "per_row": per_row,
                    "ratio": ratio, "pairs": pairs, "split_column": split_column, "eval_share": eval_share, "id_field": id_field,
                    **settings, "limit": limit, "seed": seed, "chunk_rows": chunk_rows}
    job = Job("augment", input, outputs, job_settings, overwrite=overwrite)
    rows, read = job.read(on_bad_row, limit)
    held = eval_rows(rows, split_column, eval_share, seed)
    if held and not eval_out:
        source = f"--eval-share {eval_share}" if eval_share else f"its {split_column!r} column"
        raise TunesmithError(f"{input}: {len(held)} rows are eval rows ({source}): give --eval-out FILE, so that they and their variants stay out of --out")
    wanted = dict(zip((row.index for row in rows), variants_wanted(len(rows), per_row, ratio, seed)))
    rewrite = METHODS[method]

    def process(batch: list[Row], counts: Counts) -> dict[str, list[dict]]:
        written = {name: [] for name in outputs}
        for row in batch:
            side = "eval_out" if row.index in held else "out"
            try:
                slots = fields.slots(row.data, row.where)
            except DataError as err:
                bad(err, on_bad_row, counts)
                continue
            if eval_share is not None:
                row = Row(row.index, row.where, {**row.data, split_column: "eval" if side == "eval_out" else "train"})
            originals = [text for _, text in slots]
            rng = random.Random(f"{seed}:{row.index}")  # a row's draws depend on the seed and its place alone
            made = []
            for _ in range(wanted[row.index]):
                texts = next((t for t in (rewrite(originals, rng, settings, counts) for _ in range(TRIES)) if t != originals and t not in made), None)
                if texts is None:
                    counts.add("variants left out: unchanged or repeated")
                    continue
                if not all(t.strip() for t in texts):
                    counts.add("variants left out: empty")
                    continue
                made.append(texts)
            if not pairs:
                written[side].append(row.data)
            for texts in made:
                source_id = row_id(row, id_field)
                if pairs:
                    written[side] += [{"prompt": new, "completion": old, "augmented_from": source_id, "augmentation": method}
                                      for new, old in zip(texts, originals)]
                else:
                    written[side].append(replaced(row.data, dict(zip([p for p, _ in slots], texts)))
                                         | {"augmented_from": source_id, "augmentation": method})
                counts.example({"original": originals, "variant": texts})
            counts.add("variants written", len(made) * (len(originals) if pairs else 1))
            counts.add(f"{'eval' if side == 'eval_out' else 'train'} rows augmented")
        return written

    report = job.run_chunked(rows, read, process, batch_size, chunk_rows)
    if method == "obfuscate-ko":
        share = hangul_share(" ".join(t for row in rows[:50] for _, t in safe_slots(fields, row)))
        if share < 0.5:
            print(f"note: only {share:.0%} of the text's characters are Hangul syllables; obfuscate-ko changes nothing else", file=sys.stderr)
    written = ", ".join(f"{n} rows to {report['outputs'][name]}" for name, n in report["written"].items())
    print(f"augment {method}: {report['read']} rows read; {written}; report: {report['report']}", file=sys.stderr)
    return report


def safe_slots(fields: TextFields, row: Row) -> list:
    try:
        return fields.slots(row.data, row.where)
    except DataError:
        return []


def eval_rows(rows: list[Row], split_column: str, eval_share: float | None, seed: int) -> set[int]:
    """Indices of the rows on the eval side: held out here (--eval-share), or marked so in the split column."""
    if eval_share is not None:
        if any(split_column in row.data for row in rows):
            raise TunesmithError(f"--eval-share: the rows already have a {split_column!r} column; use it (leave out --eval-share) or name another --split-column")
        order = [row.index for row in rows]
        random.Random(f"{seed}:eval").shuffle(order)
        return set(order[: max(1, round(len(order) * eval_share))])
    return {row.index for row in rows if str(row.data.get(split_column, "")).strip().lower() in EVAL_SPLITS}

