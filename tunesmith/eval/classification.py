"""Classification metrics: pull a label out of a generated answer, then accuracy, per-class
precision/recall/F1 and the confusion matrix. Pure functions, no model.

Label extraction (`extract_label`):
- first_line: the first non-empty line, normalised (lowercase, NFKC, outer punctuation trimmed);
- regex: the first match of a pattern (its first group when it has one), normalised;
- closest: with a label set, the label the answer is (exactly, then by containment, then by spelling
  similarity >= 0.6); answers close to no label become NO_LABEL.
"""

from __future__ import annotations

import difflib
import re

from tunesmith.eval.metrics import normalize

NO_LABEL = "(none)"   # what an answer naming no known label is counted as


def extract_label(output: str, mode: str = "first_line", labels: list[str] | None = None, pattern: str | None = None) -> str:
    if mode == "first_line":
        return normalize(output, first_line=True)
    if mode == "regex":
        if not pattern:
            raise ValueError("label extraction 'regex' needs a pattern")
        found = re.search(pattern, output)
        if found is None:
            return NO_LABEL
        return normalize(found.group(1) if found.groups() else found.group(0))
    if mode == "closest":
        if not labels:
            raise ValueError("label extraction 'closest' needs a label set")
        return closest_label(output, labels)
    raise ValueError(f"label extraction: {mode!r} is not one of 'first_line', 'regex', 'closest'")


def closest_label(output: str, labels: list[str]) -> str:
    """The label an answer names: equal to its first line, else the label mentioned earliest, else the most similar spelling."""
    by_norm = {normalize(label): label for label in labels}
    answer = normalize(output, first_line=True)
    if answer in by_norm:
        return by_norm[answer]
    text = normalize(output)
    mentioned = [(m.start(), label) for norm, label in by_norm.items() if (m := re.search(rf"(?<!\w){re.escape(norm)}(?!\w)", text))]
    if mentioned:
        return min(mentioned)[1]
    close = difflib.get_close_matches(answer, list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else NO_LABEL


def confusion_matrix(predicted: list[str], actual: list[str], labels: list[str]) -> list[list[int]]:
    """counts[i][j]: examples of class labels[i] predicted as labels[j]; a last column counts predictions outside `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * (len(labels) + 1) for _ in labels]   # (classes, classes + 1)
    for p, a in zip(predicted, actual):
        if a in index:
            counts[index[a]][index.get(p, len(labels))] += 1
    return counts


def classification_report(predicted: list[str], actual: list[str], labels: list[str] | None = None) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    `labels` defaults to the sorted reference labels. Precision of a class never predicted is 0 (and so is
    its F1), as sklearn does with zero_division=0. Accuracy counts every example, also those whose
    reference lies outside `labels`.
    """
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} references")
    labels = list(labels) if labels is not None else sorted(set(actual))
    matrix = confusion_matrix(predicted, actual, labels)
    per_class = {}
    for i, label in enumerate(labels):
        true_positive = matrix[i][i]
        predicted_as = sum(p == label for p, a in zip(predicted, actual))
        support = sum(matrix[i])
        precision = true_positive / predicted_as if predicted_as else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    present = [label for label in labels if per_class[label]["support"]]
    return {
        "accuracy": sum(p == a for p, a in zip(predicted, actual)) / len(actual) if actual else 0.0,
        "macro_f1": sum(per_class[label]["f1"] for label in present) / len(present) if present else 0.0,
        "per_class": per_class,
        "confusion": {"labels": labels, "columns": [*labels, NO_LABEL], "matrix": matrix},
    }


def label_set(references: list[str], max_labels: int = 20, max_chars: int = 40) -> list[str] | None:
    """The references' distinct labels when they look like a classification task: short one-line answers,
    at most `max_labels` of them, each used more than once on average. None otherwise."""
    norm = [normalize(r) for r in references]
    distinct = sorted(set(norm))
    if not references or len(distinct) > max_labels or len(distinct) * 2 > len(references):
        return None
    if any(len(r) > max_chars or "\n" in r.strip() or not r for r in norm):
        return None
    return distinct
