"""Hangul syllables by Unicode arithmetic, and the obfuscation rules reviewers use to get past filters
("화장실이 너무 작아요" → "확잠실읾 념뭄 잙앙욤").

A syllable U+AC00..U+D7A3 is 0xAC00 + (initial * 21 + medial) * 28 + final: 19 initials, 21 medials and 28
finals (0: none). Each rule changes one syllable (liaison: two neighbours) and fires with its own probability:

| rule            | what it does                                                                 | example        |
|-----------------|------------------------------------------------------------------------------|----------------|
| liaison         | a final moves onto the next syllable's silent ㅇ (연음), as the word is said  | 작아요 → 자가요 |
| similar_initial | an initial becomes its plain/tense/aspirated sibling                         | 가 → 까, 카     |
| similar_medial  | a vowel becomes one that sounds alike                                        | 개 → 게         |
| similar_final   | a final becomes one pronounced the same at the end of a syllable             | 작 → 잙, 잨     |
| add_final       | a syllable without a final gets one                                          | 너 → 념         |
"""

from __future__ import annotations

import random

INITIALS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
MEDIALS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
FINALS = " ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"   # index 0: no final
FIRST, LAST = 0xAC00, 0xD7A3

# Plain, tense and aspirated consonants sound alike to a filter's reader: ㄱ ㄲ ㅋ, ...
SIMILAR_INITIALS = ["ㄱㄲㅋ", "ㄷㄸㅌ", "ㅂㅃㅍ", "ㅅㅆ", "ㅈㅉㅊ"]
SIMILAR_MEDIALS = {"ㅐ": "ㅔ", "ㅔ": "ㅐ", "ㅒ": "ㅖ", "ㅖ": "ㅒ", "ㅙ": "ㅚㅞ", "ㅚ": "ㅙㅞ", "ㅞ": "ㅙㅚ", "ㅢ": "ㅣ"}
# Finals said alike at the end of a syllable (coda neutralisation): [k], [t], [p], [n], [l], [m].
SIMILAR_FINALS = ["ㄱㄲㅋㄳㄺ", "ㄷㅅㅆㅈㅊㅌㅎ", "ㅂㅍㅄㄿ", "ㄴㄵㄶ", "ㄹㄼㄽㄾㅀ", "ㅁㄻ"]
ADDED_FINALS = "ㄱㄴㄹㅁㅂㅇ"
# Liaison: a final -> (what stays as the final, the initial it gives the next syllable). ㅇ never moves (it is no
# initial sound); ㅎ falls silent before a vowel (좋아 → 조아).
LIAISON = {
    "ㄱ": " ㄱ", "ㄲ": " ㄲ", "ㄳ": "ㄱㅆ", "ㄴ": " ㄴ", "ㄵ": "ㄴㅈ", "ㄶ": " ㄴ", "ㄷ": " ㄷ", "ㄹ": " ㄹ", "ㄺ": "ㄹㄱ",
    "ㄻ": "ㄹㅁ", "ㄼ": "ㄹㅂ", "ㄽ": "ㄹㅆ", "ㄾ": "ㄹㅌ", "ㄿ": "ㄹㅍ", "ㅀ": " ㄹ", "ㅁ": " ㅁ", "ㅂ": " ㅂ", "ㅄ": "ㅂㅆ",
    "ㅅ": " ㅅ", "ㅆ": " ㅆ", "ㅈ": " ㅈ", "ㅊ": " ㅊ", "ㅋ": " ㅋ", "ㅌ": " ㅌ", "ㅍ": " ㅍ", "ㅎ": " ㅇ",
}
RULES = ("liaison", "similar_initial", "similar_medial", "similar_final", "add_final")
DEFAULT_RATES = {"liaison": 0.5, "similar_initial": 0.1, "similar_medial": 0.15, "similar_final": 0.15, "add_final": 0.25}


def is_syllable(char: str) -> bool:
    return FIRST <= ord(char) <= LAST


def decompose(char: str) -> tuple[str, str, str]:
    """'각' -> ('ㄱ', 'ㅏ', 'ㄱ'); the final is ' ' when there is none."""
    code = ord(char) - FIRST
    return INITIALS[code // 588], MEDIALS[code // 28 % 21], FINALS[code % 28]


def compose(initial: str, medial: str, final: str = " ") -> str:
    return chr(FIRST + (INITIALS.index(initial) * 21 + MEDIALS.index(medial)) * 28 + FINALS.index(final))


def _sibling(jamo: str, groups: list[str], rng: random.Random) -> str:
    group = next((g for g in groups if jamo in g), None)
    return rng.choice(group.replace(jamo, "")) if group else jamo


def obfuscate(text: str, rates: dict[str, float], rng: random.Random, fired: dict[str, int] | None = None) -> str:
    """`text` with each rule applied at its rate, syllable by syllable; `fired` counts the rules that changed one.
    Characters that are not Hangul syllables are left as they are."""
    fired = {} if fired is None else fired

    def hit(rule: str) -> bool:
        return rates.get(rule, 0) > 0 and rng.random() < rates[rule]

    def note(rule: str) -> None:
        fired[rule] = fired.get(rule, 0) + 1

    chars = list(text)
    for i in range(len(chars) - 1):  # liaison first: it reads the syllables as written
        a, b = chars[i], chars[i + 1]
        if is_syllable(a) and is_syllable(b):
            (ia, ma, fa), (ib, mb, fb) = decompose(a), decompose(b)
            if fa in LIAISON and ib == "ㅇ" and hit("liaison"):
                stay, moved = LIAISON[fa]
                chars[i], chars[i + 1] = compose(ia, ma, stay), compose(moved, mb, fb)
                note("liaison")
    for i, char in enumerate(chars):
        if not is_syllable(char):
            continue
        initial, medial, final = decompose(char)
        if hit("similar_initial") and (new := _sibling(initial, SIMILAR_INITIALS, rng)) != initial:
            initial = new
            note("similar_initial")
        if medial in SIMILAR_MEDIALS and hit("similar_medial"):
            medial = rng.choice(SIMILAR_MEDIALS[medial])
            note("similar_medial")
        if final != " " and hit("similar_final") and (new := _sibling(final, SIMILAR_FINALS, rng)) != final:
            final = new
            note("similar_final")
        elif final == " " and hit("add_final"):
            final = rng.choice(ADDED_FINALS)
            note("add_final")
        chars[i] = compose(initial, medial, final)
    return "".join(chars)


def hangul_share(text: str) -> float:
    """The share of non-space characters that are Hangul syllables."""
    letters = [c for c in text if not c.isspace()]
    return sum(map(is_syllable, letters)) / len(letters) if letters else 0.0
