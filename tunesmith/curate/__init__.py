"""The data workbench, `tunesmith data <verb>`: one module per verb, rows as plain dicts flowing through
generator functions, each step counting what it drops, one executor (tunesmith.curate.executor) for batching,
progress, resumable chunked output and the report. Its outputs feed `tunesmith train` as they are.

    cli.py       the `data` group's parser and one thin function per verb
    check.py     the training preflight without the model weights
    dedup.py     exact and near duplicates, eval contamination
    augment.py   variants: obfuscate-ko (hangul.py), back-translation, paraphrase
    cluster.py   sentence embeddings, k-means, outliers, the HTML report
    translate.py chosen fields into another language (seq2seq.py: the translator and paraphraser models)
    label.py     named entities (ner.py: GLiNER in windows; projection.py: back onto the source; review.py: the sheet read back)
    rows.py      reading rows (files and recipes), bad rows, the text fields (--field, --columns)
    executor.py  outputs, chunks and manifest, resume, reports (report.py renders the Markdown)
"""
