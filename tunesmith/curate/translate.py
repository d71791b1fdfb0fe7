"""`tunesmith data translate`: chosen fields of every row into another language, every other column kept.

    tunesmith data translate train.jsonl --src ko --tgt en --field prompt --out train.en.jsonl
    tunesmith data translate chats.jsonl --src en --tgt ko --model facebook/nllb-200-distilled-600M --out chats.ko.jsonl

The text is the row's format's (prompt and completion, each turn of a conversation, its system message
included) or the --field columns: a label column such as `completion: billing` is translated too unless
--field leaves it out. Each string is translated on its own, so a conversation keeps its turns. Empty
strings stay empty. The model is a MarianMT pair by default (Helsinki-NLP), any seq2seq translator by
--model (NLLB and M2M100 take --src and --tgt as their language codes); beam search, batched on the GPU
when there is one.
"""

from __future__ import annotations

import sys

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.rows import Counts, Row, TextFields, bad, is_recipe, replaced
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError


def translate(input: str, out: str, fields: TextFields, src: str, tgt: str, model: str | None, num_beams: int, max_new_tokens: int,
              overwrite: bool, on_bad_row: str, limit: int | None, seed: int, batch_size: int, chunk_rows: int) -> dict:
    from tunesmith.curate.seq2seq import Seq2Seq, default_translator

    if is_recipe(input):
        raise TunesmithError(f"{input}: translate takes a data file")
    if src == tgt:
        raise TunesmithError(f"--src and --tgt are both {src!r}: nothing to translate")
    model = model or default_translator(src, tgt)
    settings = {"src": src, "tgt": tgt, "model": model, "fields": fields.fields or "the format's", "columns": fields.columns,
                "num_beams": num_beams, "max_new_tokens": max_new_tokens, "limit": limit, "chunk_rows": chunk_rows}
    job = Job("translate", input, {"out": Output(out)}, settings, overwrite=overwrite)
    rows, read = job.read(on_bad_row, limit)
    translator = Seq2Seq.load(model, src, tgt, max_new_tokens=max_new_tokens)

    def process(batch: list[Row], counts: Counts) -> dict[str, list[dict]]:
        found = []
        for row in batch:
            try:
                found.append((row, fields.slots(row.data, row.where)))
            except DataError as err:
                bad(err, on_bad_row, counts)
        texts = [text for _, slots in found for _, text in slots if text.strip()]
        translated = iter(sentence_by_sentence(texts, translator, batch_size, num_beams, counts))
        written = []
        for row, slots in found:
            changes = {path: next(translated) for path, text in slots if text.strip()}
            written.append(replaced(row.data, changes))
            counts.add("rows translated")
            counts.add("texts translated", len(changes))
            if changes:
                counts.example({"source": [t for _, t in slots if t.strip()], "translation": list(changes.values())})
        return {"out": written}

    report = job.run_chunked(rows, read, process, batch_size, chunk_rows)
    print(f"translate {src}->{tgt}: {report['read']} rows read, {report['written']['out']} written to {out}; report: {report['report']}", file=sys.stderr)
    return report


def sentence_by_sentence(texts: list[str], translator, batch_size: int, num_beams: int, counts: Counts) -> list[str]:
    """Each text translated a sentence at a time (tunesmith.curate.projection.segments: at most 200 characters),
    the whitespace between sentences kept: a translator's window never cuts a long text short, and a sentence's
    translation fits in max_new_tokens."""
    from tunesmith.curate.projection import segments

    spans = [segments(text) for text in texts]
    pieces = [text[start:end] for text, cut in zip(texts, spans) for start, end in cut]
    done = iter(t[0] for t in translator(pieces, 1, batch_size, num_beams=num_beams)) if pieces else iter(())
    joined = []
    for text, cut in zip(texts, spans):
        parts, last = [], 0
        for start, end in cut:
            parts += [text[last:start], next(done)]
            last = end
        joined.append("".join(parts) + text[last:])
        if len(cut) > 1:
            counts.add("texts translated in several sentences")
    return joined
