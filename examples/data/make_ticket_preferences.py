"""Build the ``ticket_preferences`` demo dataset from ``support_tickets``.

For every support ticket the correct category is the chosen reply and a wrong one the rejected
reply, so DPO, KTO and reward models can be shown on the same task as the quickstart:

    examples/data/ticket_preferences/train.jsonl    (320 pairs, from support_tickets/train.jsonl)
    examples/data/ticket_preferences/heldout.jsonl  ( 80 pairs, from support_tickets/heldout.jsonl)

Each line: {"id", "prompt", "chosen", "rejected", "lang"}. The rejected category is usually
the one most easily confused with the right one (billing <-> refund, shipping <-> refund,
technical <-> account), otherwise another wrong one, drawn from ``random.Random(SEED)``: the
output is deterministic.

    python examples/data/make_ticket_preferences.py           # (re)write the two files
    python examples/data/make_ticket_preferences.py --check   # exit 1 if they differ from a fresh build
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20241122
HERE = Path(__file__).resolve().parent
SOURCE, OUT = HERE / "support_tickets", HERE / "ticket_preferences"
CATEGORIES = ("billing", "technical", "account", "shipping", "refund")
CONFUSED_WITH = {"billing": "refund", "refund": "billing", "shipping": "refund", "technical": "account", "account": "technical"}
CONFUSABLE_SHARE = 0.7


def build(split: str, rng: random.Random) -> str:
    lines = []
    for line in (SOURCE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        ticket = json.loads(line)
        right = ticket["completion"]
        if rng.random() < CONFUSABLE_SHARE:
            wrong = CONFUSED_WITH[right]
        else:
            wrong = rng.choice([c for c in CATEGORIES if c != right])
        row = {"id": ticket["id"], "prompt": ticket["prompt"], "chosen": right, "rejected": wrong, "lang": ticket["lang"]}
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = parser.parse_args()
    rng = random.Random(SEED)
    stale = []
    for split in ("train", "heldout"):
        text, path = build(split, rng), OUT / f"{split}.jsonl"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"out of date: {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
