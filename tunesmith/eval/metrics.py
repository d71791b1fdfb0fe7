"""Metrics as pure functions of predictions and references (no model, no I/O)."""

from __future__ import annotations

import string
import unicodedata
from collections import Counter

_PUNCT = string.punctuation + "。、「」『』·…“”‘’"


def normalize(text: str, lower: bool = True, strip_punct: bool = True, first_line: bool = False) -> str:
    """NFKC, optionally the first non-empty line only, lowercased, punctuation trimmed at both ends, spaces folded."""
    text = unicodedata.normalize("NFKC", text)
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    if lower:
        text = text.lower()
    text = " ".join(text.split())
    return text.strip(_PUNCT + " ") if strip_punct else text


def exact_match(predictions: list[str], references: list[str], **norm) -> float:
    """Share of predictions equal to their reference after `normalize(**norm)`; 0.0 for no examples."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(normalize(p, **norm) == normalize(r, **norm) for p, r in zip(predictions, references))
    return hits / len(predictions)


def per_class_accuracy(predictions: list[str], references: list[str], **norm) -> dict[str, float]:
    """Recall per reference label: of the examples labelled X, the share predicted X."""
    totals, hits = Counter(), Counter()
    for p, r in zip(predictions, references):
        label = normalize(r, **norm)
        totals[label] += 1
        hits[label] += normalize(p, **norm) == label
    return {label: hits[label] / totals[label] for label in sorted(totals)}
