"""`tunesmith data label`: named entities found by GLiNER, with character offsets that index the text exactly.

    tunesmith data label tickets.jsonl --field prompt --labels person,product,order_number --out labelled.jsonl
    tunesmith data label tickets.jsonl --field prompt --labels-file labels.txt --via-translation ko-en \
        --review-sheet review.csv --to-sft ner_sft.jsonl --out labelled.jsonl

Each row keeps every column and gains `entities: [{start, end, text, label, score}]`, sorted by start, never
overlapping, `text == row[field][start:end]`. The text is one column (--field, or the row's format's input:
prompt, text, question, instruction); a long text is labelled window by window (ner.py).

--via-translation SRC-PIVOT (ko-en): each sentence is translated to the pivot language (MarianMT by default,
any seq2seq translator by --translator-to), labelled there, and every entity is put back onto the source
text (projection.py); an entity that cannot be is kept in `entities_unprojected` with its offsets into
`translated_text`, and counted: the report gives the projection rate.

--review-sheet review.csv: the rows with an entity scored under --review-below, or one not projected, one
line per entity, for a person to keep, fix or drop (review.py reads it back: `data label import-sheet`);
rows without an `id` then get one, their place in the input (as augment gives them), which the sheet names.
--to-sft sft.jsonl: an SFT set, {prompt, completion}: the request to extract the labels' entities from the
text, the answer their JSON list.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.ner import flat
from tunesmith.curate.projection import project, segments
from tunesmith.curate.rows import Counts, Row, TextFields, _shown, bad, row_id
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError

ADDED = ("entities", "entities_unprojected", "translated_text")   # the columns label writes
SHEET_COLUMNS = ["id", "text", "entity", "label", "start", "end", "score", "keep", "note"]
SFT_PROMPT = ("Extract the entities of these types from the text: {labels}.\n"
              'Answer with a JSON list of {{"text": ..., "label": ...}} objects in the order they appear, or [] if there is none.\n\n'
              "Text: {text}")


@dataclass
class Via:
    """--via-translation: the languages, the two translators and how close a match in the source must be."""
    src: str
    pivot: str
    to_model: str
    back_model: str
    num_beams: int
    max_new_tokens: int
    min_match: float    # rapidfuzz score, 0-100


def parse_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """--labels a,b and/or --labels-file (one per line or comma-separated; blank lines and # comments skipped)."""
    items = [(f"--labels {labels}", part) for part in (labels or "").split(",")]
    if labels_file:
        path = Path(labels_file).expanduser()
        if not path.is_file():
            raise TunesmithError(f"--labels-file {labels_file}: no such file")
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            items += [(f"{labels_file}:{number}", part) for part in line.split("#", 1)[0].split(",")]
    found: dict[str, str] = {}
    for where, label in items:
        label = label.strip()
        if label in found:
            raise TunesmithError(f"{where}: label {label!r} given twice (first at {found[label]})")
        if label:
            found[label] = where
    if not found:
        raise TunesmithError("data label: give the entity types with --labels person,product,... or --labels-file FILE")
    return list(found)


def text_of(row: Row, fields: TextFields) -> str:
    """The one text column of a row; a row that already has label's columns is a bad row (not relabelled over)."""
    slots = fields.slots(row.data, row.where)
    if len(slots) != 1 or len(slots[0][0]) != 1:
        where = ", ".join(_shown(path) for path, _ in slots) or "no text"
        raise TunesmithError(f"{row.where}: data label reads one text column, and this row's text is in {where}: name it with --field COLUMN")
    taken = [column for column in ADDED if column in row.data]
    if taken:
        raise DataError(row.where, taken[0], "already there: this row was labelled before (drop the column to label it again)", "already_labelled")
    return slots[0][1]


def label(input: str, out: str, fields: TextFields, labels: list[str], model: str, threshold: float, via: Via | None,
          review_sheet: str | None, review_below: float, to_sft: str | None, overwrite: bool, on_bad_row: str, limit: int | None,
          batch_size: int, chunk_rows: int) -> dict:
    """GLiNER and the translators decode without sampling: --seed changes nothing here."""
    from tunesmith.curate.ner import Gliner

    outputs = {"out": Output(out)}
    if review_sheet:
        outputs["review_sheet"] = Output(review_sheet, "csv", SHEET_COLUMNS)
    if to_sft:
        outputs["to_sft"] = Output(to_sft)
    settings = {"labels": labels, "model": model, "threshold": threshold, "fields": fields.fields or "the format's input", "columns": fields.columns,
                "via_translation": via.__dict__ if via else None, "review_below": review_below if review_sheet else None,
                "limit": limit, "chunk_rows": chunk_rows}
    job = Job("label", input, outputs, settings, overwrite=overwrite, sections=sections)
    rows, read = job.read(on_bad_row, limit)
    try:
        if rows:
            text_of(rows[0], fields)  # the text column is settled before any model loads
    except DataError:
        pass  # a bad first row is the process step's to stop or count
    ner = Gliner.load(model)
    translators = load_translators(via) if via else None

    def process(batch: list[Row], counts: Counts) -> dict[str, list[dict]]:
        found = []
        for row in batch:
            try:
                found.append((row, text_of(row, fields)))
            except DataError as err:
                bad(err, on_bad_row, counts)
        texts = [text for _, text in found]
        split = ner.split
        if via:
            results = labelled_via(texts, ner, labels, threshold, batch_size, translators, via)
        else:
            results = [(entities, None, None) for entities in ner(texts, labels, threshold, batch_size)]
        if ner.split > split:
            counts.add("texts longer than the model's window (labelled in windows)", ner.split - split)
        written = {name: [] for name in outputs}
        for (row, text), (entities, missed, translated) in zip(found, results):
            data = row.data if not review_sheet or row.data.get("id") not in (None, "") else {"id": row_id(row), **row.data}
            labelled = {**data, "entities": entities} | ({"entities_unprojected": missed, "translated_text": translated} if via else {})
            written["out"].append(labelled)
            count(counts, entities, missed)
            if entities:
                counts.example({"text": text, "entities": [f"{e['text']} ({e['label']})" for e in entities]})
            if review_sheet and (missed or any(e["score"] < review_below for e in entities)):
                written["review_sheet"] += sheet_lines(str(labelled["id"]), text, entities, missed or [], review_below)
                counts.add("rows for review")
            if to_sft:
                if missed:
                    counts.add("sft rows left out: entities not projected")
                else:
                    written["to_sft"].append(sft_row(text, entities, labels))
        return written

    report = job.run_chunked(rows, read, process, batch_size, chunk_rows, summary=lambda counts: summary(counts, labels, via))
    if review_sheet:
        from tunesmith.curate.review import write_key

        write_key(review_sheet, out, fields, labels, review_below)
    print(f"label: {report['read']} rows read, {report['counters'].get('entities', 0)} entities in {report['written']['out']} rows written to {out}"
          + (f"; {report['extra']['projection']['rate']:.0%} of the entities found in translation projected" if via else "")
          + (f"; {report['written']['review_sheet']} lines to review in {review_sheet}" if review_sheet else "")
          + f"; report: {report['report']}", file=sys.stderr)
    return report


def load_translators(via: Via) -> tuple:
    from tunesmith.curate.seq2seq import Seq2Seq

    return (Seq2Seq.load(via.to_model, via.src, via.pivot, max_new_tokens=via.max_new_tokens),
            Seq2Seq.load(via.back_model, via.pivot, via.src, max_new_tokens=via.max_new_tokens))


def labelled_via(texts: list[str], ner, labels: list[str], threshold: float, batch_size: int, translators: tuple, via: Via) -> list[tuple]:
    """Per text: (entities on the source, entities not projected (offsets into the translation), the translation).
    Each sentence is translated, labelled and projected on its own; the translation joins them with spaces."""
    to, back = translators
    spans = [segments(text) for text in texts]
    sources = [text[s:e] for text, found in zip(texts, spans) for s, e in found]
    translated = [t[0] for t in to(sources, 1, batch_size, num_beams=via.num_beams)] if sources else []
    found = ner(translated, labels, threshold, batch_size) if translated else []
    names = sorted({e["text"] for entities in found for e in entities})
    back_of = dict(zip(names, (t[0] for t in back(names, 1, batch_size, num_beams=via.num_beams)))) if names else {}
    results, k = [], 0
    for text, segs in zip(texts, spans):
        entities, missed, parts, at = [], [], [], 0
        for seg in segs:
            projected, lost = project(found[k], back_of, text, seg, via.min_match)
            entities += projected
            missed += [{**e, "start": e["start"] + at, "end": e["end"] + at} for e in lost]
            parts.append(translated[k])
            at += len(translated[k]) + 1
            k += 1
        results.append((flat(entities), missed, " ".join(parts)))
    return results


def count(counts: Counts, entities: list[dict], missed: list[dict] | None) -> None:
    counts.add("rows labelled")
    counts.add("entities", len(entities))
    if entities:
        counts.add("rows with entities")
    for e in entities:
        counts.add(f"label {e['label']}")
    if missed is not None:
        counts.add("entities found in translation", len(entities) + len(missed))
        counts.add("entities not projected", len(missed))


def sheet_lines(row: str, text: str, entities: list[dict], missed: list[dict], review_below: float) -> list[dict]:
    """A flagged row's lines: every entity (keep: yes), then those not projected (keep: no, no offsets)."""
    lines = [{"id": row, "text": text, "entity": e["text"], "label": e["label"], "start": e["start"], "end": e["end"], "score": e["score"],
              "keep": "yes", "note": f"score under {review_below:g}" if e["score"] < review_below else ""} for e in entities]
    lines += [{"id": row, "text": text, "entity": m["back_translation"] or m["text"], "label": m["label"], "start": "", "end": "", "score": m["score"],
               "keep": "no", "note": f"not found in the text ({m['reason']}); in the translation: {m['text']!r}"} for m in missed]
    return lines


def sft_row(text: str, entities: list[dict], labels: list[str]) -> dict:
    answer = [{"text": e["text"], "label": e["label"]} for e in entities]
    return {"prompt": SFT_PROMPT.format(labels=", ".join(labels), text=text), "completion": json.dumps(answer, ensure_ascii=False)}


def summary(counts: Counts, labels: list[str], via: Via | None) -> dict:
    c = counts.counters
    extra = {"labels": {label: c.get(f"label {label}", 0) for label in labels}}
    if via:
        total = c.get("entities found in translation", 0)
        projected = total - c.get("entities not projected", 0)
        extra["projection"] = {"found": total, "projected": projected, "not_projected": total - projected,
                               "rate": projected / total if total else 1.0}
    return extra


def sections(extra: dict) -> list[str]:
    lines = ["## Entities per label", "", "| label | entities |", "|---|---|", *(f"| {label} | {n:,} |" for label, n in extra["labels"].items()), ""]
    if "projection" in extra:
        p = extra["projection"]
        lines += ["## Projection onto the source text", "",
                  f"{p['projected']:,} of {p['found']:,} entities found in the translation projected ({p['rate']:.1%}); "
                  f"{p['not_projected']:,} kept in `entities_unprojected`, with offsets into `translated_text`.", ""]
    return lines
