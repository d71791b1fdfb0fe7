"""The review sheet of `data label` read back: `tunesmith data label import-sheet review.csv --out reviewed.jsonl`.

The sheet (written by label.py, UTF-8 with a byte-order mark) has one line per entity of each row to review:
id, text, entity, label, start, end, score, keep, note. A person may, on any line:
- set keep to no (the entity goes) or yes (it stays; an empty cell is yes; y/n, 1/0 and o/x read too);
- fix the label (one of the labels the run used) or the entity's text: the offsets follow the new text to
  its occurrence nearest the old start; or fix start and end (characters of the text, end exclusive);
- add a line for an entity the model missed: the row's id, the entity and its label (start and end where it
  occurs more than once); delete a line to drop its entity.
The text column is for reading only. A row whose every line is gone stays as it was labelled (counted).
The sheet's lines of a row replace its entities, each then with score 1.0 (a person's word), and the row
gets `reviewed: true` and no `entities_unprojected` left. Every mistake is an error naming `SHEET:ROW`, the
row as a spreadsheet numbers it (the header is row 1), with what is wrong and what would be right.
The key file beside the sheet (SHEET.key.json) names the labelled file, its text column and the labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.label import sft_row
from tunesmith.curate.ner import flat
from tunesmith.curate.rows import Counts, TextFields, row_id
from tunesmith.errors import TunesmithError
from tunesmith.eval.sheet import key_path, read_keyed_sheet, read_sheet_rows

KEEP = {"yes": True, "y": True, "1": True, "true": True, "o": True, "": True, "no": False, "n": False, "0": False, "false": False, "x": False}
HELP = "keep: yes or no; label: one of the run's labels; start/end: characters of the text, or empty to find the entity"


def write_key(sheet: str, labelled: str, fields: TextFields, labels: list[str], review_below: float) -> Path:
    """What import-sheet needs besides the sheet: the labelled file, the text column, the labels, the rows sent."""
    _, lines = read_sheet_rows(Path(sheet))
    key = {"sheet": Path(sheet).name, "labelled": str(Path(labelled).resolve()), "field": fields.fields[0] if fields.fields else None,
           "columns": fields.columns, "labels": labels, "review_below": review_below, "rows": list(dict.fromkeys(line["id"] for line in lines))}
    path = key_path(sheet)
    path.write_text(json.dumps(key, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def import_sheet(sheet: str, out: str, into: str | None, key_file: str | None, to_sft: str | None, overwrite: bool) -> dict:
    sheet_path = Path(sheet).expanduser()
    key_file = Path(key_file) if key_file else key_path(sheet_path)
    key, header, lines = read_keyed_sheet(sheet_path, key_file)
    lost = [c for c in ("id", "text", "entity", "label", "start", "end", "keep") if c not in header]
    if lost:
        raise TunesmithError(f"{sheet}: column{'s' if len(lost) > 1 else ''} {', '.join(lost)} missing from the header row (keep the header as it was written)")
    into = into or key["labelled"]
    outputs = {"out": Output(out)} | ({"to_sft": Output(to_sft)} if to_sft else {})
    job = Job("label import-sheet", into, outputs, {"sheet": str(sheet_path.resolve()), "key": str(key_file.resolve())}, overwrite=overwrite)
    rows, counts = job.read("error", None)
    fields = TextFields([key["field"]] if key["field"] else [], key["columns"], "input")
    by_id = {}
    for row in rows:
        rid = row_id(row)
        if rid in by_id:
            raise TunesmithError(f"{row.where}: id {rid!r} again (first at {by_id[rid].where}): the sheet's lines cannot be matched to one row")
        by_id[rid] = row
    grouped: dict[str, list[tuple[int, dict]]] = {}
    for number, line in enumerate(lines, 2):
        rid = (line.get("id") or "").strip()
        if rid not in by_id:
            raise TunesmithError(f"{sheet}:{number}: id {rid!r} is not a row of {into}")
        grouped.setdefault(rid, []).append((number, line))
    reviewed = {rid: entities_of(sheet, found, text_at(by_id[rid], fields), key["labels"], by_id[rid].data.get("entities") or [], counts)
                for rid, found in grouped.items()}
    written = {"out": [], "to_sft": []}
    for rid, row in by_id.items():
        data = row.data
        if rid in reviewed:
            data = {**data, "entities": reviewed[rid], "reviewed": True} | ({"entities_unprojected": []} if "entities_unprojected" in data else {})
            counts.add("rows reviewed")
        written["out"].append(data)
        if to_sft:
            if data.get("entities_unprojected"):
                counts.add("sft rows left out: entities not projected")
            else:
                written["to_sft"].append(sft_row(text_at(row, fields), data.get("entities") or [], key["labels"]))
    untouched = [rid for rid in key["rows"] if rid not in grouped]
    if untouched:
        counts.add("rows sent for review with no line left (left as labelled)", len(untouched))
    report = job.finish({name: written[name] for name in outputs}, counts, {"labels": key["labels"], "untouched": untouched})
    print(f"label import-sheet: {counts.counters.get('rows reviewed', 0)} rows reviewed, {len(written['out'])} rows written to {out}"
          + (f"; {len(untouched)} sent for review have no line left in the sheet and stay as labelled: {', '.join(untouched[:5])}" if untouched else "")
          + f"; report: {report['report']}", file=sys.stderr)
    return report


def text_at(row, fields: TextFields) -> str:
    slots = fields.slots(row.data, row.where)
    if len(slots) != 1:
        raise TunesmithError(f"{row.where}: not the one text column the key file names ({fields.fields or 'the format input'})")
    return slots[0][1]


def entities_of(sheet: str, found: list[tuple[int, dict]], text: str, labels: list[str], before: list[dict], counts: Counts) -> list[dict]:
    """A row's entities from its sheet lines, each checked against the row's text."""
    old = {(e["start"], e["end"], e["label"]) for e in before}
    kept: list[tuple[int, dict]] = []
    for number, line in found:
        where = f"{sheet}:{number}"
        keep = (line.get("keep") or "").strip().lower()
        if keep not in KEEP:
            raise TunesmithError(f"{where}: keep {line.get('keep')!r}: write yes or no")
        if unified(line.get("text") or "") != unified(text):
            raise TunesmithError(f"{where}: the text column was changed; it is for reading only (fix the entity, label, start and end instead)")
        if not KEEP[keep]:
            counts.add("entities dropped in review")
            continue
        label = (line.get("label") or "").strip()
        if label not in labels:
            raise TunesmithError(f"{where}: label {label!r} is not one of this run's labels: {', '.join(labels)}")
        start, end = span(where, line, text)
        entity = {"start": start, "end": end, "text": text[start:end], "label": label, "score": 1.0}
        for other_number, other in kept:
            if start < other["end"] and other["start"] < end:
                raise TunesmithError(f"{where}: {entity['text']!r} ({start}-{end}) overlaps {other['text']!r} ({other['start']}-{other['end']}) "
                                     f"of row {other_number}; entities may not overlap: keep one (keep: no on the other)")
        kept.append((number, entity))
        counts.add("entities kept as they were" if (start, end, label) in old else "entities fixed or added in review")
    return flat([e for _, e in kept])


def span(where: str, line: dict, text: str) -> tuple[int, int]:
    """Where a line's entity sits: its start/end when they give its text; else its text's occurrence (nearest the
    given start when there are several)."""
    entity = (line.get("entity") or "").strip()
    cells = [(line.get(c) or "").strip() for c in ("start", "end")]
    if any(cells) and not all(c.isdigit() for c in cells):
        raise TunesmithError(f"{where}: start {cells[0]!r}, end {cells[1]!r}: give both as whole numbers (characters of the text), or leave both empty")
    if all(cells):
        start, end = int(cells[0]), int(cells[1])
        if not 0 <= start < end <= len(text):
            raise TunesmithError(f"{where}: start {start}, end {end}: outside the text (0 to {len(text)}, start before end)")
        if not entity or text[start:end] == entity:
            return start, end
    elif not entity:
        raise TunesmithError(f"{where}: no entity and no start/end: write the entity's text ({HELP})")
    at = [i for i in range(len(text)) if text.startswith(entity, i)]
    if not at:
        shown = f" (start {cells[0]}, end {cells[1]} give {text[int(cells[0]):int(cells[1])]!r})" if all(cells) else ""
        raise TunesmithError(f"{where}: entity {entity!r} is not in the text{shown}; write it as it appears there")
    if len(at) > 1 and not all(cells):
        raise TunesmithError(f"{where}: entity {entity!r} occurs {len(at)} times in the text (at {', '.join(map(str, at[:5]))}): give start and end")
    start = min(at, key=lambda i: abs(i - int(cells[0]))) if all(cells) else at[0]
    return start, start + len(entity)


def unified(text: str) -> str:
    """A text as a spreadsheet round trip leaves it: line ends and the spaces around it aside."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()
