"""`tunesmith plan`: the peak memory of a recipe, estimated from the model's config alone (no weights read).

estimate.py holds the arithmetic (pure functions of a Profile and a Setup), profile.py measures a Profile on the
model built on the meta device (shapes and dtypes, no data), cli.py the command and its printing.
"""
