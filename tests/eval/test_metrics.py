"""Text metrics against hand-computed values, Korean included, and their empty/degenerate cases."""

import math

import pytest

from tunesmith.eval.metrics import (
    bleu,
    chrf,
    exact_match,
    lcs_length,
    normalize,
    perplexity,
    reward_accuracy,
    rouge,
    rouge_tokens,
)


def test_normalize_folds_case_width_spaces_and_outer_punctuation():
    assert normalize("  Refund.\n") == "refund"
    assert normalize("ＲＥＦＵＮＤ!") == "refund"  # NFKC folds full-width letters
    assert normalize("\n\nBilling\nbecause ...", first_line=True) == "billing"
    assert normalize("환불 입니다。") == "환불 입니다"


def test_exact_match_with_normalisation_options():
    assert exact_match(["Refund.", "billing", "환불"], ["refund", "Billing", "환불"]) == 1.0
    assert exact_match(["Refund.", "billing"], ["refund", "Billing"], lower=False, strip_punct=False) == 0.0
    assert exact_match(["account\nsince you asked", "x"], ["account", "y"], first_line=True) == 0.5
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_bleu_korean_uses_characters_and_matches_hand_computed_value():
    # Character tokens: every n-gram precision is 1 (4/4, 3/3, 2/2, 1/1); brevity penalty exp(1 - 5/4).
    score, tokenizer = bleu(["가나다라"], ["가나다라마"])
    assert tokenizer == "char"
    assert score == pytest.approx(100 * math.exp(-0.25), abs=1e-6)
    # 13a sees one word on each side, and they differ: the particle-level near miss scores nothing.
    assert bleu(["가나다라"], ["가나다라마"], tokenize="13a")[0] == 0.0


def test_bleu_english_defaults_to_13a_and_degenerate_cases():
    score, tokenizer = bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert (score, tokenizer) == (pytest.approx(100.0), "13a")
    assert bleu([], []) == (0.0, "13a")
    assert bleu([""], ["the cat"])[0] == 0.0


def test_chrf_identical_disjoint_and_korean_partial():
    assert chrf(["학교에 갔다"], ["학교에 갔다"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["학교"]) == 0.0
    partial = chrf(["학교는 갔다"], ["학교에 갔다"])
    assert 0.0 < partial < 100.0
    assert chrf([], []) == 0.0


def test_rouge_english_hand_computed():
    scores = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 on both sides; bigrams: 3 of 5; LCS "the cat on the mat": 5 of 6.
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})


def test_rouge_counts_hangul_words_and_characters():
    assert rouge_tokens("나는 학교에 간다!") == ["나는", "학교에", "간다"]
    words = rouge(["나는 학교에 간다"], ["나는 집에 간다"])
    assert words == pytest.approx({"rouge1": 2 / 3, "rouge2": 0.0, "rougeL": 2 / 3})
    # Characters: 5 shared of 7 predicted and 6 reference -> F1 = 10/13.
    chars = rouge(["나는 학교에 간다"], ["나는 집에 간다"], tokenize="char")
    assert chars["rouge1"] == pytest.approx(10 / 13)


def test_rouge_degenerate_inputs_score_zero_and_average_over_examples():
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge([""], [""]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge(["a"], ["a"])["rouge2"] == 0.0  # no bigram on either side
    assert rouge(["환불", "x"], ["환불", "y"])["rouge1"] == pytest.approx(0.5)


def test_lcs_length():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_perplexity_is_exp_of_token_weighted_mean_nll():
    assert perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    assert math.isnan(perplexity([], []))


def test_reward_accuracy_counts_ties_as_misses():
    assert reward_accuracy([1.0, 0.5, 2.0, 0.0], [0.0, 0.5, 3.0, -1.0]) == 0.5
    assert reward_accuracy([], []) == 0.0
