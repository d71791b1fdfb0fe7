"""Rows/s and entities/s of `data label`'s GLiNER step on the bundled support tickets.

    .venv/bin/python bench/label_throughput.py                                    # the tiny random model, offline, CPU
    .venv/bin/python bench/label_throughput.py --model urchade/gliner_multi-v2.1  # the default model (hub access; a GPU when there is one)

The tickets (320 rows, English and Korean) are labelled --repeat times for each --batch-sizes value with
person, product, date, money and order number, through the same Gliner wrapper the verb uses (windows,
merging, offsets), after one warm-up batch; model loading is left out of the figures. Without --model the
tiny random GLiNER of examples/tiny_gliner.py is built in a temporary folder: its figures measure the
pipeline around a minimal encoder, and its entities are arbitrary (threshold 0.5 on random scores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKETS = ROOT / "examples" / "data" / "support_tickets" / "train.jsonl"
LABELS = ["person", "product", "date", "money", "order number"]


def tiny_model(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("tiny_gliner", ROOT / "examples" / "tiny_gliner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a GLiNER hub id or folder (default: the tiny random model, built here)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the tickets per batch size")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    if not args.model:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tunesmith.curate.ner import Gliner

    texts = [json.loads(line)["prompt"] for line in TICKETS.read_text(encoding="utf-8").splitlines()] * args.repeat
    with tempfile.TemporaryDirectory() as folder:
        ner = Gliner.load(args.model or str(tiny_model(Path(folder) / "tiny-gliner")))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"model {args.model or 'tiny random GLiNER'} on {device}, {len(texts)} rows, threshold {args.threshold}")
        print(f"{'batch':>6} {'rows':>6} {'entities':>9} {'seconds':>8} {'rows/s':>8} {'entities/s':>11}")
        for size in map(int, args.batch_sizes.split(",")):
            ner(texts[:size], LABELS, args.threshold, size)  # warm-up
            start = time.perf_counter()
            found = sum(len(entities) for i in range(0, len(texts), size) for entities in ner(texts[i : i + size], LABELS, args.threshold, size))
            seconds = time.perf_counter() - start
            print(f"{size:>6} {len(texts):>6} {found:>9,} {seconds:>8.2f} {len(texts) / seconds:>8,.1f} {found / seconds:>11,.1f}")


if __name__ == "__main__":
    main()
