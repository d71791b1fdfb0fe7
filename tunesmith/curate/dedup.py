"""`tunesmith data dedup`: exact and near duplicates within a file, and eval rows leaked into it.

    tunesmith data dedup train.jsonl --against heldout.jsonl                 # report only
    tunesmith data dedup train.jsonl --against heldout.jsonl --write clean.jsonl

Exact: the same text after normalising (Unicode NFKC, case folded, punctuation and spacing collapsed), by
hash. Near: MinHash LSH (datasketch) over character n-grams, which works for Korean and other scripts
without spaces as well as for English; every candidate the LSH proposes is checked on its true Jaccard
similarity, so only pairs at or above --threshold count. The first row of a group is kept; the later ones
are its duplicates. With --against, each row is also matched against the eval files: the contamination
report lists every eval row found in the input with its twins there. --write drops the duplicates and the
leaked rows, counted by reason; the default only reports.
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.report import cell
from tunesmith.curate.rows import Counts, Row, TextFields, bad, is_recipe, read_input
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError

NUM_PERM = 128
SHOWN_TEXT = 160
SHOWN_ROWS = 100
REASONS = ("exact_duplicate", "near_duplicate", "in_eval_exact", "in_eval_near")    # rows per table in the Markdown report; report.json lists them all


def normalise(text: str) -> str:
    """NFKC, case folded, punctuation, symbols and control characters as spaces, runs of spaces as one."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text).split())


def ngrams(text: str, n: int) -> set[str]:
    """Character n-grams of normalised text (the whole text when shorter than n)."""
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))} if text else set()


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Entry:
    row: Row
    text: str       # as the row holds it
    key: str        # hash of the normalised text
    grams: set[str]


class Index:
    """Rows seen so far: exact twins by hash, near twins by LSH, their Jaccard similarity checked."""

    def __init__(self, threshold: float, seed: int):
        from datasketch import MinHashLSH

        self.threshold, self.seed = threshold, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.by_key: dict[str, Entry] = {}
        self.entries: dict[str, Entry] = {}

    def signatures(self, entries: list[Entry]) -> list:
        from datasketch import MinHash

        return MinHash.bulk([[g.encode("utf-8") for g in sorted(e.grams)] for e in entries], num_perm=NUM_PERM, seed=self.seed)

    def add(self, entry: Entry, signature) -> None:
        self.by_key.setdefault(entry.key, entry)
        name = str(len(self.entries))
        self.entries[name] = entry
        if entry.grams:
            self.lsh.insert(name, signature)

    def match(self, entry: Entry, signature) -> tuple[str, Entry, float] | None:
        """('exact' or 'near', the earliest most similar twin, its similarity), or None."""
        if entry.key in self.by_key:
            return "exact", self.by_key[entry.key], 1.0
        if not entry.grams:
            return None
        best = None
        for name in sorted(self.lsh.query(signature), key=int):
            twin = self.entries[name]
            similarity = jaccard(entry.grams, twin.grams)
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (twin, similarity)
        return None if best is None else ("near", best[0], round(best[1], 3))


def entries_of(rows: list[Row], fields: TextFields, ngram: int, on_bad_row: str, counts: Counts) -> list[Entry]:
    entries = []
    for row in rows:
        try:
            text = fields.text(row.data, row.where)
        except DataError as err:
            bad(err, on_bad_row, counts)
            continue
        normal = normalise(text)
        entries.append(Entry(row, text, hashlib.sha256(normal.encode("utf-8")).hexdigest(), ngrams(normal, ngram)))
    return entries


def dedup(input: str, fields: TextFields, against: list[str], threshold: float, ngram: int, write: str | None,
          report: str | None, overwrite: bool, on_bad_row: str, limit: int | None, seed: int) -> dict:
    if not 0 < threshold <= 1:
        raise TunesmithError(f"--threshold: {threshold} is not a Jaccard similarity in (0, 1]")
    settings = {"fields": fields.fields or "the format's", "against": against, "threshold": threshold, "ngram": ngram,
                "write": write is not None, "limit": limit, "seed": seed}
    outputs = {"out": Output(write)} if write else {}
    default_report = Path(f"{Path(input.split('::')[0]).name.split('.')[0]}.dedup.report.json")
    job = Job("dedup", input, outputs, settings, overwrite=overwrite, sections=sections,
              report=Path(report) if report else None if write else default_report)
    if is_recipe(input) and write:
        raise TunesmithError(f"{input}: a recipe's train data may be several files; --write works on one data file (dedup each file)")
    rows, counts = job.read(on_bad_row, limit)
    entries = entries_of(rows, fields, ngram, on_bad_row, counts)

    held = Index(threshold, seed)
    eval_rows = 0
    # A recipe is checked against its own eval data (its eval files, or the share it holds out), then any --against.
    for file, split in [(input, "eval")] * is_recipe(input) + [(file, "train") for file in against]:
        eval_counts = Counts()
        eval_entries = entries_of(read_input(file, on_bad_row, eval_counts, split=split), fields, ngram, on_bad_row, eval_counts)
        eval_rows += len(eval_entries)
        for entry, signature in zip(eval_entries, held.signatures(eval_entries)):
            held.add(entry, signature)
        for reason, n in eval_counts.dropped.items():
            counts.add(f"eval rows dropped ({reason})", n)

    seen = Index(threshold, seed)
    kept, duplicates, leaks = [], [], {}
    for entry, signature in zip(entries, seen.signatures(entries)):
        leak = held.match(entry, signature) if held.entries else None
        twin = seen.match(entry, signature)
        if leak:
            kind, source, similarity = leak
            leaks.setdefault(source.row.where, {"eval": source.row.where, "eval_text": clip(source.text), "twins": []})["twins"].append(
                {"where": entry.row.where, "kind": kind, "similarity": similarity, "text": clip(entry.text)})
            counts.drop(f"in_eval_{kind}", f"{entry.row.where}: {kind} twin of eval row {source.row.where}")
        if twin:
            kind, first, similarity = twin
            duplicates.append({"where": entry.row.where, "kind": kind, "twin": first.row.where, "similarity": similarity, "text": clip(entry.text)})
            if not leak:
                counts.drop(f"{kind}_duplicate", f"{entry.row.where}: {kind} duplicate of {first.row.where}")
        else:
            seen.add(entry, signature)
        if not leak and not twin:
            kept.append(entry.row.data)
    counts.add("exact duplicates", sum(d["kind"] == "exact" for d in duplicates))
    counts.add("near duplicates", sum(d["kind"] == "near" for d in duplicates))
    if against or is_recipe(input):
        counts.add("eval rows", eval_rows)
        counts.add("eval rows found in the input", len(leaks))
    if not write:  # a report alone drops nothing: the counts say what --write would drop
        counts.dropped = {f"{reason} (with --write)" if reason in REASONS else reason: n for reason, n in counts.dropped.items()}
    extra = {"duplicates": duplicates, "contamination": list(leaks.values())}
    result = job.finish({"out": kept} if write else {}, counts, extra)
    print(summary(result), file=sys.stderr)
    return result


def clip(text: str) -> str:
    return text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 1] + "…"


def summary(report: dict) -> str:
    c = report["counters"]
    line = f"dedup: {report['read']} rows, {c['exact duplicates']} exact and {c['near duplicates']} near duplicates"
    if "eval rows" in c:
        line += f"; {c['eval rows found in the input']} of {c['eval rows']} eval rows found in the input"
    written = f"; {report['written']['out']} rows written to {report['outputs']['out']}" if report["outputs"] else ""
    return f"{line}{written}; report: {report['report']}"


def sections(extra: dict) -> list[str]:
    lines = []
    if extra["contamination"]:
        lines += ["## Contamination: eval rows found in the input", "", "| eval row | eval text | twin in the input | kind | similarity |", "|---|---|---|---|---:|"]
        pairs = [(leak, twin) for leak in extra["contamination"] for twin in leak["twins"]]
        lines += [f"| {leak['eval']} | {cell(leak['eval_text'])} | {twin['where']} | {twin['kind']} | {twin['similarity']:.2f} |"
                  for leak, twin in pairs[:SHOWN_ROWS]]
        lines += [more(len(pairs)), ""]
    if extra["duplicates"]:
        lines += ["## Duplicates within the input", "", "| row | duplicate of | kind | similarity | text |", "|---|---|---|---:|---|"]
        lines += [f"| {d['where']} | {d['twin']} | {d['kind']} | {d['similarity']:.2f} | {cell(d['text'])} |" for d in extra["duplicates"][:SHOWN_ROWS]]
        lines += [more(len(extra["duplicates"])), ""]
    return lines


def more(n: int) -> str:
    return f"\n{n - SHOWN_ROWS} more in the report's JSON" if n > SHOWN_ROWS else ""

