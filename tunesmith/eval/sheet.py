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


def read_sheet_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise TunesmithError(f"{path}: neither UTF-8 nor CP949 text; save the sheet as 'CSV UTF-8'")
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return list(csv.DictReader(io.StringIO(text, newline=""), dialect=dialect))


def read_ratings(sheet: str | Path, key_file: str | Path | None = None) -> tuple[list[str], list[dict[str, float]]]:
    """The models, and per sheet row the ratings by model (unblinded; skipped cells absent)."""
    sheet = Path(sheet)
    key_file = Path(key_file) if key_file else key_path(sheet)
    if not key_file.is_file():
        raise TunesmithError(f"{key_file}: key file not found (it was written next to the sheet; pass --key PATH)")
    key = json.loads(key_file.read_text(encoding="utf-8"))
    rated = []
    for number, row in enumerate(read_sheet_rows(sheet), 2):
        row_id = (row.get("id") or "").strip()
        if row_id not in key["rows"]:
            raise TunesmithError(f"{sheet}:{number}: id {row_id!r} is not in the key file {key_file.name}")
        ratings = {}
        for letter, model in key["rows"][row_id].items():
            cell = (row.get(f"rating_{letter}") or "").strip()
            if not cell:
                continue
            try:
                ratings[model] = float(cell.replace(",", "."))
            except ValueError:
                raise TunesmithError(f"{sheet}:{number}: rating_{letter}: {cell!r} is not a number ({RATING_HELP})") from None
        rated.append(ratings)
    return key["models"], rated


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
    models, rated = read_ratings(sheet, key_file)
    if not any(rated):
        raise TunesmithError(f"{sheet}: no rating filled in yet (the rating_* columns are empty; {RATING_HELP})")
    result = summarize(models, rated)
    out = Path(sheet).with_name(Path(sheet).stem + ".results.json")
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print("| model | rated | mean | 95% CI |\n| --- | --- | --- | --- |")
    for model, s in result["models"].items():
        print(f"| {model} | {s['n']} | {s['mean']:.2f} | {s['ci95'][0]:.2f} – {s['ci95'][1]:.2f} |")
    if result["pairwise"]:
        print("\n| pair | win rate of the first (ties count half) | rows |\n| --- | --- | --- |")
        for pair, s in result["pairwise"].items():
            print(f"| {pair} | {s['win_rate']:.1%} | {s['n']} |")
    print(f"written: {out}")
    return result
