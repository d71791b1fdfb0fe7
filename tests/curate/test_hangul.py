import random

import pytest

from tunesmith.curate.hangul import FINALS, INITIALS, MEDIALS, RULES, compose, decompose, is_syllable, obfuscate

ONLY = {rule: {r: 1.0 if r == rule else 0.0 for r in RULES} for rule in RULES}


def test_every_syllable_decomposes_and_composes_back():
    for code in range(0xAC00, 0xD7A4):
        assert compose(*decompose(chr(code))) == chr(code)
    assert decompose("각") == ("ㄱ", "ㅏ", "ㄱ") and decompose("가") == ("ㄱ", "ㅏ", " ") and compose("ㅎ", "ㅏ", "ㄴ") == "한"
    assert (len(INITIALS), len(MEDIALS), len(FINALS)) == (19, 21, 28)
    assert not is_syllable("ㄱ") and not is_syllable("a") and is_syllable("힣")


@pytest.mark.parametrize("text, expected", [
    ("작아요", "자가요"),        # a simple final moves onto the silent ㅇ
    ("읽어요", "일거요"),        # of a double final, the second moves
    ("앉아", "안자"),
    ("좋아요", "조아요"),        # ㅎ falls silent
    ("강아지", "강아지"),        # ㅇ never moves
    ("책 이", "책 이"),          # not across a space
])
def test_liaison_moves_a_final_onto_the_next_silent_initial(text, expected):
    fired = {}
    assert obfuscate(text, ONLY["liaison"], random.Random(0), fired) == expected
    assert fired.get("liaison", 0) == (text != expected)


def test_similar_initial_swaps_plain_tense_and_aspirated():
    seen = {obfuscate("가", ONLY["similar_initial"], random.Random(seed)) for seed in range(30)}
    assert seen == {"까", "카"}
    assert obfuscate("나", ONLY["similar_initial"], random.Random(0)) == "나"  # ㄴ has no sibling


def test_similar_medial_swaps_vowels_that_sound_alike():
    assert obfuscate("개", ONLY["similar_medial"], random.Random(0)) == "게"
    assert obfuscate("세", ONLY["similar_medial"], random.Random(0)) == "새"
    assert {obfuscate("왜", ONLY["similar_medial"], random.Random(s)) for s in range(30)} == {"외", "웨"}
    assert obfuscate("가", ONLY["similar_medial"], random.Random(0)) == "가"


def test_similar_final_keeps_the_sound_of_the_final():
    seen = {decompose(obfuscate("작", ONLY["similar_final"], random.Random(s)))[2] for s in range(60)}
    assert seen == set("ㄲㅋㄳㄺ")
    assert obfuscate("강", ONLY["similar_final"], random.Random(0)) == "강"  # ㅇ is alone in its class
    assert obfuscate("가", ONLY["similar_final"], random.Random(0)) == "가"


def test_add_final_gives_a_final_only_to_syllables_without_one():
    seen = {decompose(obfuscate("너", ONLY["add_final"], random.Random(s)))[2] for s in range(60)}
    assert seen == set("ㄱㄴㄹㅁㅂㅇ")
    assert obfuscate("작", ONLY["add_final"], random.Random(0)) == "작"


def test_rates_of_zero_change_nothing_and_other_scripts_are_kept():
    text = "화장실이 너무 작아요! OK 👍"
    assert obfuscate(text, {r: 0.0 for r in RULES}, random.Random(0)) == text
    out = obfuscate(text, {r: 1.0 for r in RULES}, random.Random(0))
    assert out != text and out.endswith("! OK 👍") and len(out) == len(text)
