"""The data workbench, `tunesmith data <verb>`: one module per verb, rows as plain dicts flowing through
generator functions, each step counting what it drops, one executor (tunesmith.curate.executor) for batching,
progress, resumable chunked output and the report. Its outputs feed `tunesmith train` as they are.

    check.py     the training preflight without the model weights
    rows.py      reading rows, bad rows, the text fields (--field, --columns)
    executor.py  outputs, chunks and manifest, resume, reports (report.py renders the Markdown)
"""
