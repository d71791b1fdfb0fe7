"""Label extraction, per-class precision/recall/F1 and confusion matrix against hand-computed values."""

import pytest

from tunesmith.eval.classification import NO_LABEL, classification_report, closest_label, extract_label, label_set


def test_first_line_and_regex_extraction():
    assert extract_label("Refund.\nBecause the parcel...", "first_line") == "refund"
    assert extract_label("Category: Shipping (sure)", "regex", pattern=r"Category:\s*(\w+)") == "shipping"
    assert extract_label("no idea", "regex", pattern=r"Category:\s*(\w+)") == NO_LABEL
    with pytest.raises(ValueError, match="needs a pattern"):
        extract_label("x", "regex")


def test_closest_label_exact_mention_spelling_and_none():
    labels = ["billing", "refund", "환불", "배송"]
    assert closest_label("Refund!", labels) == "refund"
    assert closest_label("I think this is about billing, not refund", labels) == "billing"  # earliest mention
    assert closest_label("이 문의는 배송 관련입니다", labels) == "배송"
    assert closest_label("환불요청", labels) == "환불"  # not a word match; spelling ratio 2*2/6 = 0.67
    assert closest_label("refnud", labels) == "refund"
    assert closest_label("I cannot help with that", labels) == NO_LABEL


def test_classification_report_hand_computed():
    predicted = ["a", "a", "b", "c", NO_LABEL]
    actual = ["a", "b", "b", "c", "c"]
    report = classification_report(predicted, actual, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["confusion"]["matrix"] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]]
    assert report["confusion"]["columns"] == ["a", "b", "c", NO_LABEL]
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (c["precision"], c["recall"], c["support"]) == pytest.approx((1.0, 0.5, 2))
    assert report["macro_f1"] == pytest.approx(2 / 3)


def test_classification_report_korean_and_degenerate():
    report = classification_report(["환불", "환불"], ["환불", "배송"])
    assert report["confusion"]["labels"] == ["배송", "환불"]
    assert report["per_class"]["배송"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["환불"]["precision"] == 0.5
    empty = classification_report([], [])
    assert empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0 and empty["per_class"] == {}


def test_label_set_detects_classification_references():
    assert label_set(["refund", "Billing", "refund", "billing."]) == ["billing", "refund"]
    assert label_set(["a long free-form answer number %d" % i for i in range(10)]) is None
    assert label_set([]) is None
