"""Human review sheets: blinded model outputs in a CSV a reviewer fills in, and the results read back.

    tunesmith eval runs/x --data heldout.jsonl --compare base --human-sheet review.csv
    tunesmith eval import-sheet review.csv

The sheet has id, prompt, reference, then one output column per model (output_A, output_B, ...) in an
order shuffled on every row, one rating column per output (rating_A, ...) and a comment column. Which
model wrote which column lives only in the key file beside it (review.key.json). The CSV is UTF-8 with a
byte-order mark, so Excel shows Korean; reading back also accepts a sheet re-saved as CP949 (Korean
Excel's plain "CSV") or with semicolons.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from tunesmith.errors import TunesmithError

RATING_HELP = "rate each output 1 (bad) to 5 (excellent); leave a cell empty to skip it"
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def key_path(sheet: str | Path) -> Path:
    sheet = Path(sheet)
    return sheet.with_name(sheet.stem + ".key.json")


def write_sheet(path: str | Path, ids: list[str], prompts: list[str], references: list[str],
                outputs: dict[str, list[str]], seed: int = 0) -> Path:
    """Write the sheet and its key file; returns the key file's path."""
    models = list(outputs)
    letters = [chr(ord("A") + k) for k in range(len(models))]
    rng = random.Random(seed)
    header = ["id", "prompt", "reference", *(f"output_{x}" for x in letters), *(f"rating_{x}" for x in letters), "comment"]
    key_rows = {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, row_id in enumerate(ids):
            order = rng.sample(models, len(models))
            key_rows[row_id] = dict(zip(letters, order))
            writer.writerow([row_id, prompts[i], references[i], *(outputs[m][i] for m in order), *([""] * len(models)), ""])
    key = {"sheet": path.name, "models": models, "seed": seed, "scale": RATING_HELP, "rows": key_rows}
    key_file = key_path(path)
    key_file.write_text(json.dumps(key, indent=2, ensure_ascii=False), encoding="utf-8")
    return key_file


def read_sheet_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows."""
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise TunesmithError(f"{path}: neither UTF-8 nor CP949 text; save the sheet as 'CSV UTF-8'")
    # Only the delimiter is guessed (from the header, which has no quotes): the rest is Excel's, doubled quotes
    # included, which a dialect sniffed from a line without quotes gets wrong.
    try:
        delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


@dataclass
class Ratings:
    models: list[str]
    rated: list[dict[str, float]]            # per sheet row, the ratings by model (unblinded; skipped cells absent)
    empty: dict[str, list[int]]              # rating column -> rows (as a spreadsheet numbers them) where it is empty
    absent: list[str]                        # ids of the key file that no sheet row has

    def not_rated(self) -> list[str]:
        """What the reviewer left out, one line per column (rows as ranges), then the rows missing."""
        lines = [f"{column} empty in row{'s' if len(found) > 1 else ''} {spans(found)}" for column, found in self.empty.items() if found]
        if self.absent:
            lines.append(f"{len(self.absent)} row(s) of the key file not in the sheet: {', '.join(self.absent[:10])}"
                         + (", ..." if len(self.absent) > 10 else ""))
        return lines


def read_keyed_sheet(sheet: Path, key_file: str | Path | None = None) -> tuple[dict, list[str], list]:
    """A filled sheet and the JSON key file written next to it (or `key_file`): (key, header, rows)."""
    if not sheet.is_file():
        raise TunesmithError(f"{sheet}: no such file")
    key_file = Path(key_file) if key_file else key_path(sheet)
    if not key_file.is_file():
        raise TunesmithError(f"{key_file}: key file not found (it was written next to the sheet; pass --key PATH)")
    try:
        key = json.loads(key_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TunesmithError(f"{key_file}: not the JSON key file tunesmith wrote ({err})") from None
    return (key, *read_sheet_rows(sheet))


def read_ratings(sheet: str | Path, key_file: str | Path | None = None) -> Ratings:
    """Every rating, checked: a number from 1 to 5, in a column and a row the key file knows. Positions are
    `sheet:row`, the row as a spreadsheet numbers it (the header is row 1; a cell may hold several lines)."""
    sheet = Path(sheet)
    key, header, rows = read_keyed_sheet(sheet, key_file)
    letters = sorted({letter for order in key["rows"].values() for letter in order})
    lost = [f"rating_{x}" for x in letters if f"rating_{x}" not in header] + ([] if "id" in header else ["id"])
    if lost:
        raise TunesmithError(f"{sheet}: column{'s' if len(lost) > 1 else ''} {', '.join(lost)} missing from the header row "
                             f"(keep the header as it was written; {RATING_HELP})")
    rated, empty, seen = [], {f"rating_{x}": [] for x in letters}, {}
    for number, row in enumerate(rows, 2):
        row_id = (row.get("id") or "").strip()
        if row_id not in key["rows"]:
            raise TunesmithError(f"{sheet}:{number}: id {row_id!r} is not in the key file {key_file.name}")
        if row_id in seen:
            raise TunesmithError(f"{sheet}:{number}: id {row_id!r} again (first in row {seen[row_id]}); keep one row per id")
        seen[row_id] = number
        ratings = {}
        for letter, model in key["rows"][row_id].items():
            column = f"rating_{letter}"
            cell = (row.get(column) or "").strip()
            if not cell:
                empty[column].append(number)
                continue
            ratings[model] = rating(cell, f"{sheet}:{number}: {column}")
        rated.append(ratings)
    return Ratings(key["models"], rated, empty, [i for i in key["rows"] if i not in seen])


def rating(cell: str, where: str) -> float:
    """A cell's rating: a number (a decimal comma is read as a point) from 1 to 5."""
    try:
        value = float(cell.replace(",", "."))
    except ValueError:
        raise TunesmithError(f"{where}: {cell!r} is not a number ({RATING_HELP})") from None
    if not 1 <= value <= 5:  # also refuses nan and inf, which float() reads
        raise TunesmithError(f"{where}: {cell!r} is outside 1-5 ({RATING_HELP})")
    return value


def spans(numbers: list[int]) -> str:
    """[3, 4, 5, 8] -> '3-5, 8'."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def t95(df: int) -> float:
    """Two-sided 95% t quantile; beyond the table, the Cornish-Fisher expansion z + (z^3 + z) / (4 df)."""
    if df < 1:
        return math.nan
    if df <= len(T95):
        return T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% confidence interval (Student t); NaN where there are too few values."""
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def win_rate(rated: list[dict[str, float]], a: str, b: str) -> tuple[float, int]:
    """Share of rows (rated for both) where a beats b, ties counting half; and how many rows that is."""
    pairs = [(r[a], r[b]) for r in rated if a in r and b in r]
    if not pairs:
        return math.nan, 0
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs), len(pairs)


def summarize(models: list[str], rated: list[dict[str, float]]) -> dict:
    per_model = {}
    for model in models:
        values = [r[model] for r in rated if model in r]
        mean, low, high = mean_ci(values)
        per_model[model] = {"n": len(values), "mean": mean, "ci95": [low, high]}
    pairs = {}
    for a, b in combinations(models, 2):
        rate, n = win_rate(rated, a, b)
        pairs[f"{a} vs {b}"] = {"win_rate": rate, "n": n}
    return {"rows": len(rated), "models": per_model, "pairwise": pairs}


def import_sheet(sheet: str, key_file: str | None = None) -> dict:
    ratings = read_ratings(sheet, key_file)
    cells = sum(len(r) for r in ratings.rated)
    skipped = sum(len(lines) for lines in ratings.empty.values())
    if not cells:
        raise TunesmithError(f"{sheet}: no rating filled in yet (the rating_* columns are empty; {RATING_HELP})")
    result = summarize(ratings.models, ratings.rated)
    result["not_rated"] = {"cells": skipped, "lines": ratings.empty, "rows_not_in_sheet": ratings.absent}
    out = Path(sheet).with_name(Path(sheet).stem + ".results.json")
    out.write_text(json.dumps(without_nan(result), indent=2, ensure_ascii=False), encoding="utf-8")
    print("| model | rated | mean | 95% CI |\n| --- | --- | --- | --- |")
    for model, s in result["models"].items():
        low, high = s["ci95"]
        print(f"| {model} | {s['n']} | {shown(s['mean'], '.2f')} | {shown(low, '.2f')} – {shown(high, '.2f')} |")
    if result["pairwise"]:
        print("\n| pair | win rate of the first (ties count half) | rows |\n| --- | --- | --- |")
        for pair, s in result["pairwise"].items():
            print(f"| {pair} | {shown(s['win_rate'], '.1%')} | {s['n']} |")
    if skipped or ratings.absent:
        print(f"note: {cells} of {cells + skipped} rating cells filled; not rated:", file=sys.stderr)
        for line in ratings.not_rated():
            print(f"  {line}", file=sys.stderr)
    for model, s in result["models"].items():
        if not s["n"]:
            print(f"note: {model} has no rating at all", file=sys.stderr)
    print(f"written: {out}")
    return result


def shown(value: float, spec: str) -> str:
    """A number as the table shows it; '-' where there is none (NaN: too few ratings)."""
    return "-" if math.isnan(value) else format(value, spec)


def without_nan(node):
    """NaN (no value: too few ratings) as null, which JSON readers accept."""
    if isinstance(node, float) and math.isnan(node):
        return None
    if isinstance(node, dict):
        return {k: without_nan(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_nan(v) for v in node]
    return node
