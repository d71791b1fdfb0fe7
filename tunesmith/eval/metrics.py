"""Metrics as pure functions of predictions and references (no model, no I/O).

Scales: exact match, ROUGE, perplexity, reward accuracy are plain numbers (shares in 0-1); BLEU and
chrF are on sacrebleu's 0-100 scale, the one papers quote. Classification metrics live in
tunesmith.eval.classification.

Korean and other scripts without spaces between morphemes:
- BLEU: sacrebleu's default `13a` tokenizer splits on spaces and punctuation, so a Korean word with a
  different particle (학교에 / 학교는) is a total miss. `ko-mecab` would be ideal but needs MeCab and its
  Korean dictionary, `flores200` needs sentencepiece and downloads its model; neither works offline with
  our pinned packages. So `tokenize="auto"` uses `char` (every character a token, what sacrebleu itself
  recommends for languages it has no tokenizer for) when any reference contains Hangul, kana or Han
  characters, and `13a` otherwise. The tokenizer used is returned with the score.
- chrF works on character n-grams already: no tokenizer, fine for Korean as it is.
- ROUGE: the `rouge-score` package keeps only [a-z0-9] and scores Korean as 0. Ours splits on Unicode
  word characters, so Hangul words count (`tokenize="char"` scores characters instead).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter

# What `tunesmith eval --metrics` accepts (rouge gives rouge1/rouge2/rougeL, accuracy also macro_f1;
# tool_calls gives tool_call_valid, tool_call_name, tool_call_exact and tool_call_none: tunesmith.eval.tool_calls).
EVAL_METRICS = ("exact_match", "accuracy", "bleu", "chrf", "rouge", "perplexity", "tool_calls")

_PUNCT = string.punctuation + "。、「」『』·…“”‘’"
# Hangul syllables and jamo, Hiragana/Katakana, CJK ideographs: scripts written without spaces between morphemes.
_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_WORD = re.compile(r"\w+")


def normalize(text: str, lower: bool = True, strip_punct: bool = True, first_line: bool = False) -> str:
    """NFKC, optionally the first non-empty line only, lowercased, punctuation trimmed at both ends, spaces folded."""
    text = unicodedata.normalize("NFKC", text)
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    if lower:
        text = text.lower()
    text = " ".join(text.split())
    return text.strip(_PUNCT + " ") if strip_punct else text


def _check_lengths(predictions: list, references: list) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def exact_match(predictions: list[str], references: list[str], **norm) -> float:
    """Share of predictions equal to their reference after `normalize(**norm)`; 0.0 for no examples."""
    _check_lengths(predictions, references)
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


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def bleu_tokenizer(references: list[str]) -> str:
    """The `auto` choice: character tokens when any reference is Korean, Japanese or Chinese, else 13a."""
    return "char" if any(has_cjk(r) for r in references) else "13a"


def bleu(predictions: list[str], references: list[str], tokenize: str = "auto") -> tuple[float, str]:
    """Corpus BLEU (Papineni et al. 2002) via sacrebleu, 0-100, and the tokenizer used. 0.0 for no examples."""
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references)
    tokenize = bleu_tokenizer(references) if tokenize == "auto" else tokenize
    if not predictions:
        return 0.0, tokenize
    return BLEU(tokenize=tokenize).corpus_score(predictions, [references]).score, tokenize


def chrf(predictions: list[str], references: list[str], word_order: int = 0) -> float:
    """Corpus chrF (Popović 2015) via sacrebleu, 0-100: character 6-grams, beta 2; word_order=2 gives chrF++."""
    from sacrebleu.metrics import CHRF

    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    return CHRF(word_order=word_order).corpus_score(predictions, [references]).score


def rouge_tokens(text: str, tokenize: str = "word") -> list[str]:
    """Lowercased NFKC tokens: Unicode words (Hangul included) or, with 'char', every non-space character."""
    text = unicodedata.normalize("NFKC", text).lower()
    if tokenize == "char":
        return [c for c in text if not c.isspace()]
    if tokenize != "word":
        raise ValueError(f"rouge tokenize: {tokenize!r} is not one of 'word', 'char'")
    return _WORD.findall(text)


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_n_f1(pred: list[str], ref: list[str], n: int) -> float:
    """ROUGE-N F1 of one pair (Lin 2004): clipped n-gram overlap; 0.0 when either side has no n-gram."""
    pred_grams = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((pred_grams & ref_grams).values())
    return _f1(overlap, sum(pred_grams.values()), sum(ref_grams.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, 1):
            # row[j] still holds the previous row's value: it becomes the next diagonal.
            previous_diagonal, row[j] = row[j], (previous_diagonal + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l_f1(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 of one pair: LCS-based precision and recall, as rouge-score computes 'rougeL'."""
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def rouge(predictions: list[str], references: list[str], tokenize: str = "word") -> dict[str, float]:
    """Mean per-example F1 of ROUGE-1, ROUGE-2 and ROUGE-L (0-1). Empty pairs score 0, as in rouge-score."""
    _check_lengths(predictions, references)
    scores = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    if not predictions:
        return scores
    for p, r in zip(predictions, references):
        pred, ref = rouge_tokens(p, tokenize), rouge_tokens(r, tokenize)
        scores["rouge1"] += rouge_n_f1(pred, ref, 1)
        scores["rouge2"] += rouge_n_f1(pred, ref, 2)
        scores["rougeL"] += rouge_l_f1(pred, ref)
    return {name: total / len(predictions) for name, total in scores.items()}


def perplexity(nll_sums: list[float], token_counts: list[int]) -> float:
    """Corpus perplexity exp(sum NLL / sum tokens): every scored token weighs the same, whatever its example.

    nll_sums[i] is the summed negative log-likelihood (nats) of example i's token_counts[i] scored tokens.
    NaN when no token was scored.
    """
    _check_lengths(nll_sums, token_counts)
    tokens = sum(token_counts)
    if tokens == 0:
        return math.nan
    return math.exp(sum(nll_sums) / tokens)


def reward_accuracy(chosen_scores: list[float], rejected_scores: list[float]) -> float:
    """Share of preference pairs whose chosen response scores strictly above the rejected one (ties are misses),
    the accuracy TRL's reward and DPO trainers report. 0.0 for no pairs."""
    _check_lengths(chosen_scores, rejected_scores)
    if not chosen_scores:
        return 0.0
    return sum(c > r for c, r in zip(chosen_scores, rejected_scores)) / len(chosen_scores)
