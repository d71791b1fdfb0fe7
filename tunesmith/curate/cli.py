"""`tunesmith data <verb>`: the parser of the data group and one thin function per verb.

tunesmith.cli calls add_parser(subparsers) once; every verb imports its module (and the heavy libraries it
needs) only when it runs, so `tunesmith --help` stays instant.
"""

from __future__ import annotations

import argparse

from tunesmith.errors import TunesmithError


def cmd_check(args) -> None:
    from tunesmith.curate.check import check

    check(args.recipe, args.overrides, args.out)


def add_parser(sub) -> None:
    from tunesmith.cli import command

    p = command(sub, "data", "check, dedup, augment and cluster data before training",
                "tunesmith data check recipes/quickstart.yaml",
                "Each verb reads any file training reads (JSONL, JSON, CSV/TSV, Parquet, a save_to_disk folder, a hub "
                "dataset), writes a new file and, next to it, OUT.report.json and OUT.report.md: rows read, written, "
                "changed and dropped by reason.")
    data = p.add_subparsers(dest="data_command", required=True, metavar="VERB", title="verbs")

    q = command(data, "check", "the training preflight without loading the model weights",
                "tunesmith data check recipes/quickstart.yaml\n"
                "tunesmith data check recipes/quickstart.yaml data.max_length=256 --out check.json",
                "Reads, checks and tokenizes every example exactly as `tunesmith train` does before its model loads, "
                "and prints the same report: counts per file and split, drops by reason, token lengths, the first "
                "example with its trained tokens marked, the EOS share and the template checks. Nothing is written "
                "but --out.")
    q.add_argument("recipe", help="recipe YAML file")
    q.add_argument("overrides", nargs="*", help="dotted overrides, as for train: data.max_length=256")
    q.add_argument("--out", help="also write the report as JSON here (and as Markdown next to it, .md)")
    q.set_defaults(func=cmd_check)


def add_common(p: argparse.ArgumentParser, output: bool = True) -> None:
    """Input, text fields, bad rows, limits and seed: the same flags, with the same meaning, for every row verb."""
    p.add_argument("input", help="a data file (JSONL, JSON, CSV/TSV, Parquet), a save_to_disk folder (folder::split) or a hub dataset")
    if output:
        p.add_argument("--out", required=True, help="the file to write (never the input); OUT.report.json and OUT.report.md go next to it")
        p.add_argument("--overwrite", action="store_true", help="replace --out (and its report) if it exists")
    p.add_argument("--field", action="append", default=[], metavar="COLUMN",
                   help="a column holding the text (repeatable, or comma-separated); a message list means its user and "
                   "assistant turns. Default: the text fields of the row's format (prompt/completion, messages, ...)")
    p.add_argument("--columns", help="rename format fields as data.columns does: prompt=ticket,completion=label")
    p.add_argument("--on-bad-row", choices=("error", "drop"), default="error", help="a malformed row stops the run, or is counted and skipped")
    p.add_argument("--limit", type=int, help="read only the first N rows, to try settings on a few first")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (each row draws from the seed and its position)")


def fields_from(args, side: str = "all"):
    from tunesmith.curate.rows import TextFields, parse_columns

    names = [name.strip() for item in args.field for name in item.split(",") if name.strip()]
    return TextFields(names, parse_columns(args.columns), side)


def positive(flag: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise TunesmithError(f"{flag}: {value} is not a whole number > 0")
