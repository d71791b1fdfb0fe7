"""Rows/s of the data verbs on the bundled data, repeated to a size where the rate is stable.

    .venv/bin/python bench/data_throughput.py [--copies 10]

The support tickets (320 rows) and the Korean reviews (200 rows) are written --copies times, each copy's
text marked so that dedup sees distinct rows; then data dedup (with the held-out tickets as --against),
data augment obfuscate-ko (2 variants per row) and data cluster (all-MiniLM-L6-v2, --k 5) run on them in
a temporary folder. Prints rows, seconds and rows/s per verb, as each report records them. Offline.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


def copies(source: Path, target: Path, field: str, n: int) -> Path:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    with target.open("w", encoding="utf-8") as f:
        for k in range(n):
            for row in rows:
                f.write(json.dumps(row | {field: f"{row[field]} ({k})"}, ensure_ascii=False) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunesmith.cli import main as tunesmith

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        tickets = copies(DATA / "support_tickets" / "train.jsonl", tmp / "tickets.jsonl", "prompt", args.copies)
        reviews = copies(DATA / "korean_reviews" / "reviews.jsonl", tmp / "reviews.jsonl", "text", args.copies)
        runs = {
            "dedup": (["data", "dedup", str(tickets), "--against", str(DATA / "support_tickets" / "heldout.jsonl"), "--report", str(tmp / "d.json")], tmp / "d.json"),
            "augment obfuscate-ko": (["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--per-row", "2", "--out", str(tmp / "a.jsonl")],
                                     tmp / "a.jsonl.report.json"),
            "cluster": (["data", "cluster", str(tickets), "--k", "5", "--out", str(tmp / "c.jsonl")], tmp / "c.jsonl.report.json"),
        }
        print(f"{'verb':24} {'rows':>7} {'seconds':>8} {'rows/s':>8}")
        for verb, (command, report) in runs.items():
            with contextlib.redirect_stderr(io.StringIO()):
                assert tunesmith(command) == 0, verb
            r = json.loads(report.read_text(encoding="utf-8"))
            print(f"{verb:24} {r['read']:>7,} {r['seconds']:>8.1f} {r['rows_per_s']:>8,.0f}")


if __name__ == "__main__":
    main()
