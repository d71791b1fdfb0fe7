"""`tunesmith data augment METHOD`: a set grown with variants of its rows.

    tunesmith data augment obfuscate-ko reviews.jsonl --field text --per-row 2 --out grown.jsonl
    tunesmith data augment obfuscate-ko reviews.jsonl --field text --pairs --eval-share 0.1 --out pairs.jsonl --eval-out eval.jsonl

A variant is its source row with the chosen text rewritten; every other column (the label, the answer) is
kept, and it carries `augmented_from` (the source row's `id`, else its file:line, which then becomes the
row's `id` in the output) and `augmentation` (the method); data.eval_split holds a row out with its variants. The output holds each source row followed by its variants; with --pairs, only
(rewritten, original) pairs as {prompt, completion}, ready for `data.format: prompt_completion` (a
restoration model). A variant equal to its source or to an earlier variant, or an empty one, is counted
and left out.

How many: --per-row N variants of every row, or --ratio R new rows per row read (1.5: one for every row,
a second for a seeded half).

Leakage: rows of an eval split (a `split` column saying eval, validation, test, ...; or --eval-share held
out here, by source row, before any variant is made) go with their variants to --eval-out, never to --out.
"""

from __future__ import annotations

import math
import random
import sys

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.hangul import DEFAULT_RATES, RULES, hangul_share, obfuscate
from tunesmith.curate.rows import Counts, Row, TextFields, bad, is_recipe, replaced, row_id
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError

EVAL_SPLITS = ("eval", "evaluation", "validation", "valid", "val", "test", "heldout", "held_out", "dev")
TRIES = 3   # draws per variant before an unchanged one is given up (counted)
# A seq2seq model returns this many beams per variant wanted: some come out equal to the text, or to each other.
BEAMS_PER_VARIANT = 2


def obfuscate_ko(batch: list[list[str]], wanted: list[int], rngs: list[random.Random], settings: dict, models: dict, counts: Counts) -> list:
    out = []
    for texts, n, rng in zip(batch, wanted, rngs):
        fired: dict[str, int] = {}
        made = []
        for _ in range(n):
            for _ in range(TRIES):  # a short text may come out unchanged: draw again, a few times
                variant = [obfuscate(text, settings["rules"], rng, fired) for text in texts]
                if variant != texts and variant not in made:
                    break
            made.append(variant)
        for rule, k in fired.items():
            counts.add(f"rule {rule}", k)
        out.append(made)
    return out


def back_translation(batch: list[list[str]], wanted: list[int], rngs: list[random.Random], settings: dict, models: dict, counts: Counts) -> list:
    """Each text to the pivot language and back; the way back returns as many beams (or samples) as variants wanted."""
    flat = [text for texts in batch for text in texts]
    pivots = [p[0] for p in models["to"](flat, 1, settings["batch_size"], settings["temperature"], settings["seed"])]
    n = BEAMS_PER_VARIANT * max(wanted)
    backs = models["back"](pivots, n, settings["batch_size"], settings["temperature"], settings["seed"] + 1)
    counts.add("texts translated", len(flat))
    return regroup(batch, backs, n)


def paraphrase(batch: list[list[str]], wanted: list[int], rngs: list[random.Random], settings: dict, models: dict, counts: Counts) -> list:
    """A seq2seq paraphraser's beams (or samples), or a causal LM's answers to --prompt, one sampled answer per variant."""
    flat = [text for texts in batch for text in texts]
    if "seq2seq" in models:
        n = BEAMS_PER_VARIANT * max(wanted)
        return regroup(batch, models["seq2seq"](flat, n, settings["batch_size"], settings["temperature"], settings["seed"]), n)
    n = max(wanted)
    from tunesmith.eval.engines import Decoding

    engine = models["engine"]
    conversations = [[{"role": "user", "content": settings["prompt"].replace("{text}", text)}] for text in flat]
    answers = [[c.text.strip() for c in engine.complete(conversations, Decoding(max_new_tokens=settings["max_new_tokens"],
                temperature=settings["temperature"], seed=settings["seed"] * 1000 + k), settings["batch_size"], progress=False)] for k in range(n)]
    return regroup(batch, [[answers[k][i] for k in range(n)] for i in range(len(flat))], n)


def regroup(batch: list[list[str]], outputs: list[list[str]], n: int) -> list:
    """Per-text outputs back into rows: a row's k-th candidate holds the k-th output of each of its texts."""
    out, at = [], 0
    for texts in batch:
        rows = outputs[at : at + len(texts)]
        out.append([[row[k] for row in rows] for k in range(min(n, *map(len, rows)) if rows else 0)])
        at += len(texts)
    return out


# method -> candidates(rows' texts, variants wanted per row, each row's random source, settings, loaded models, counts):
# for each row, a list of candidate variants (each the row's texts rewritten); the first good ones are kept.
METHODS = {"obfuscate-ko": obfuscate_ko, "back-translation": back_translation, "paraphrase": paraphrase}


def load_models(method: str, settings: dict) -> dict:
    """The models a method runs, loaded once the input and outputs are known to be good."""
    from tunesmith.curate.seq2seq import Seq2Seq

    if method == "back-translation":
        return {"to": Seq2Seq.load(settings["to_model"], settings["src"], settings["via"], max_new_tokens=settings["max_new_tokens"]),
                "back": Seq2Seq.load(settings["back_model"], settings["via"], settings["src"], max_new_tokens=settings["max_new_tokens"])}
    if method == "paraphrase":
        from transformers import AutoConfig

        from tunesmith.runs import is_run_dir

        model = settings["model"]
        if not is_run_dir(model):
            try:
                seq2seq = AutoConfig.from_pretrained(model).is_encoder_decoder
            except (OSError, ValueError):
                seq2seq = False  # a .gguf file, or a model tunesmith's loader finds where transformers does not
            if seq2seq:
                return {"seq2seq": Seq2Seq.load(model, prefix=settings["prefix"], max_new_tokens=settings["max_new_tokens"])}
        from tunesmith.checks import check_model
        from tunesmith.eval.engines import open_engine

        check_model(model, "--model")
        return {"engine": open_engine(model, engine="transformers")}
    return {}


def parse_rules(text: str | None) -> dict[str, float]:
    """--rules liaison=0.8,add_final=0 over the defaults."""
    rates = dict(DEFAULT_RATES)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if name not in RULES:
            raise TunesmithError(f"--rules: unknown rule {name!r}; rules: {', '.join(RULES)}")
        try:
            rate = float(value) if sep else None
        except ValueError:
            rate = None
        if rate is None or not 0 <= rate <= 1:
            raise TunesmithError(f"--rules {item}: give each rule a probability from 0 to 1, e.g. {name}=0.3")
        rates[name] = rate
    return rates


def variants_wanted(n: int, per_row: int | None, ratio: float | None, seed: int) -> list[int]:
    """How many variants each of n rows gets: --per-row for all, or --ratio's whole part for all plus one for a
    seeded sample of round(fraction * n) rows."""
    if per_row is not None:
        return [per_row] * n
    whole = math.floor(ratio)
    extra = set(random.Random(f"{seed}:ratio").sample(range(n), round((ratio - whole) * n)))
    return [whole + (i in extra) for i in range(n)]


def augment(method: str, input: str, out: str, eval_out: str | None, fields: TextFields, per_row: int | None, ratio: float | None,
            pairs: bool, split_column: str, eval_share: float | None, settings: dict, overwrite: bool,
            on_bad_row: str, limit: int | None, seed: int, batch_size: int, chunk_rows: int) -> dict:
    """`settings` are the method's own (rules, models, decoding): reported, and part of what a resumed run must match."""
    if is_recipe(input):
        raise TunesmithError(f"{input}: augment takes a data file; its eval rows go to --eval-out by their split column or --eval-share")
    if (per_row is None) == (ratio is None):
        raise TunesmithError("augment: give --per-row N or --ratio R (new rows per row read)")
    if eval_share is not None and not 0 < eval_share < 1:
        raise TunesmithError(f"--eval-share: {eval_share} is not a share between 0 and 1")
    outputs = {"out": Output(out)} | ({"eval_out": Output(eval_out)} if eval_out else {})
    job_settings = {"method": method, "fields": fields.fields or "the format's input", "columns": fields.columns, "per_row": per_row,
                    "ratio": ratio, "pairs": pairs, "split_column": split_column, "eval_share": eval_share,
                    **settings, "limit": limit, "seed": seed, "chunk_rows": chunk_rows}
    job = Job("augment", input, outputs, job_settings, overwrite=overwrite)
    rows, read = job.read(on_bad_row, limit)
    held = eval_rows(rows, split_column, eval_share, seed)
    if held and not eval_out:
        source = f"--eval-share {eval_share}" if eval_share else f"its {split_column!r} column"
        raise TunesmithError(f"{input}: {len(held)} rows are eval rows ({source}): give --eval-out FILE, so that they and their variants stay out of --out")
    wanted = dict(zip((row.index for row in rows), variants_wanted(len(rows), per_row, ratio, seed)))
    rewrite = METHODS[method]
    models = load_models(method, settings)

    def process(batch: list[Row], counts: Counts) -> dict[str, list[dict]]:
        written = {name: [] for name in outputs}
        rows, slots = [], []
        for row in batch:
            try:
                slots.append(fields.slots(row.data, row.where))
            except DataError as err:
                bad(err, on_bad_row, counts)
                continue
            rows.append(row)
        originals = [[text for _, text in found] for found in slots]
        # Each row draws from the seed and its place alone, whatever the batch it is in.
        candidates = rewrite(originals, [wanted[r.index] for r in rows], [random.Random(f"{seed}:{r.index}") for r in rows], settings, models, counts) if rows else []
        for row, found, texts, options in zip(rows, slots, originals, candidates):
            side = "eval_out" if row.index in held else "out"
            if eval_share is not None:
                row = Row(row.index, row.where, {**row.data, split_column: "eval" if side == "eval_out" else "train"})
            made = []
            for variant in options:
                if len(made) == wanted[row.index]:
                    break
                if not all(t.strip() for t in variant):
                    counts.add("variants left out: empty")
                elif variant == texts or variant in made:
                    counts.add("variants left out: unchanged or repeated")
                else:
                    made.append(variant)
            source_id = row_id(row)
            if not pairs:  # the row, named as its variants name it (training holds a row out with its variants)
                written[side].append(row.data if row.data.get("id") not in (None, "") else {"id": source_id, **row.data})
            for variant in made:
                if pairs:
                    written[side] += [{"prompt": new, "completion": old, "augmented_from": source_id, "augmentation": method}
                                      for new, old in zip(variant, texts)]
                else:
                    written[side].append(replaced(row.data, dict(zip([p for p, _ in found], variant)))
                                         | {"augmented_from": source_id, "augmentation": method})
                counts.example({"original": texts, "variant": variant})
            counts.add("variants written", len(made) * (len(texts) if pairs else 1))
            counts.add(f"{'eval' if side == 'eval_out' else 'train'} rows augmented")
        return written

    report = job.run_chunked(rows, read, process, batch_size, chunk_rows)
    if method == "obfuscate-ko":
        share = hangul_share(" ".join(t for row in rows[:50] for _, t in safe_slots(fields, row)))
        if share < 0.5:
            print(f"note: only {share:.0%} of the text's characters are Hangul syllables; obfuscate-ko changes nothing else", file=sys.stderr)
    written = ", ".join(f"{n} rows to {report['outputs'][name]}" for name, n in report["written"].items())
    print(f"augment {method}: {report['read']} rows read; {written}; report: {report['report']}", file=sys.stderr)
    return report


def safe_slots(fields: TextFields, row: Row) -> list:
    try:
        return fields.slots(row.data, row.where)
    except DataError:
        return []


def eval_rows(rows: list[Row], split_column: str, eval_share: float | None, seed: int) -> set[int]:
    """Indices of the rows on the eval side: held out here (--eval-share), or marked so in the split column."""
    if eval_share is not None:
        if any(split_column in row.data for row in rows):
            raise TunesmithError(f"--eval-share: the rows already have a {split_column!r} column; use it (leave out --eval-share) or name another --split-column")
        order = [row.index for row in rows]
        random.Random(f"{seed}:eval").shuffle(order)
        return set(order[: max(1, round(len(order) * eval_share))])
    return {row.index for row in rows if str(row.data.get(split_column, "")).strip().lower() in EVAL_SPLITS}

