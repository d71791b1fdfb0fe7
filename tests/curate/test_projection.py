import pytest

from tunesmith.curate.ner import flat
from tunesmith.curate.projection import Match, best_match, project, segments

pytest.importorskip("rapidfuzz", reason="pip install 'tunesmith[label]'")


def test_segments_are_sentences_and_a_long_one_is_cut_at_spaces():
    text = "Why was I charged $127.00 on 3/18?  I use v2.1.\n\n배송이 늦어요. 빨리 보내 주세요!"
    assert [text[s:e] for s, e in segments(text)] == ["Why was I charged $127.00 on 3/18?", "I use v2.1.", "배송이 늦어요.", "빨리 보내 주세요!"]
    long = " ".join(["단어"] * 120)  # 359 characters, one sentence
    pieces = segments(long, most=100)
    assert all(e - s <= 100 for s, e in pieces) and " ".join(long[s:e] for s, e in pieces) == long
    assert segments("x" * 250, most=100) == [(0, 100), (100, 200), (200, 250)]
    assert segments("   ") == []


def test_a_match_is_exact_when_it_can_be_and_trimmed_to_the_best_span_when_fuzzy():
    source = "어제 삼성전자에서 산 갤럭시S24를 (새것) 받았어요"
    exact = best_match(["Galaxy", "갤럭시S24"], source, 0, len(source))
    assert (source[exact.start : exact.end], exact.score) == ("갤럭시S24", 100.0)
    fuzzy = best_match(["갤럭시 S24"], source, 0, len(source))
    assert source[fuzzy.start : fuzzy.end] == "갤럭시S24" and 90 < fuzzy.score < 100  # without the particle 를
    spaced = best_match(["삼성 전자"], source, 0, len(source))
    assert source[spaced.start : spaced.end] == "삼성전자"
    assert best_match(["Galaxy"], source, 0, len(source)) is None
    shouted = "서울에서 GALAXY를 샀어요"
    assert best_match(["galaxy"], shouted, 0, len(shouted)) == Match(5, 11, 100.0)  # case aside
    turkish = "İstanbul에서 GALAXY를 샀어요"  # 'İ'.lower() is two characters: no case-blind search, offsets stay true
    found = best_match(["GALAXY"], turkish, 0, len(turkish))
    assert (found.start, found.end, found.score) == (11, 17, 100.0)
    elsewhere = best_match(["받았어요"], source, 0, 10)  # only looked for inside the segment
    assert elsewhere.end <= 10 and elsewhere.score < 50


def test_two_entities_on_one_source_span_keep_the_higher_score():
    source = "김민수입니다."
    found = [{"start": 8, "end": 17, "text": "Kim Minsu", "label": "person", "score": 0.9},
             {"start": 0, "end": 3, "text": "Kim", "label": "product", "score": 0.6}]
    projected, missed = project(found, {"Kim Minsu": "김민수", "Kim": "김"}, source, (0, len(source)), 80)
    assert projected == [{"start": 0, "end": 3, "text": "김민수", "label": "person", "score": 0.9}]
    assert [(m["text"], m["reason"]) for m in missed] == [("Kim", "lands on '김', taken by another entity")]


def test_flat_keeps_the_best_of_overlapping_spans_from_overlapping_windows():
    a = {"start": 0, "end": 5, "text": "", "label": "x", "score": 0.6}
    b = {"start": 3, "end": 9, "text": "", "label": "x", "score": 0.8}
    c = {"start": 9, "end": 12, "text": "", "label": "y", "score": 0.5}
    assert flat([a, b, dict(b), c]) == [b, c]
