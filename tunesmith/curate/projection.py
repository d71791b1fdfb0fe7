"""Entities found in a translation, put back onto the source text (`data label --via-translation ko-en`).

The source is cut into sentences (segments), each translated on its own: no text is cut by the translator's
window, and an entity found in a sentence's translation is looked for in that sentence only. Its candidates
in the source are the entity as written (names, model numbers and sums often stay in Latin script) and its
translation back into the source language; the best match of either (rapidfuzz, then the span around the
alignment that matches best) is taken when it scores at least `min_score` (0-100). Otherwise the entity is
not projected: the caller keeps it, with its offsets in the translation, in a side field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_CHARS = 200     # a sentence longer than this is cut at spaces: far inside a Marian or NLLB window
# A sentence ends at a line end, or at . ! ? followed by a space ("$127.00" and "v2.1" stay whole).
SENTENCE = re.compile(r"[^\n]+?(?:[.!?。！？]+(?=\s)|$)", re.M)
EDGE = " \t\n\"'“”‘’()[]{}<>.,!?;:。！？、"
REFINE = 2              # characters either end may move to improve a fuzzy match


def segments(text: str, most: int = SEGMENT_CHARS) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace around it left out; one longer than `most` characters
    is cut at spaces into pieces of at most `most` (a run without spaces at `most`)."""
    spans = []
    for m in SENTENCE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        while end - start > most:
            cut = text.rfind(" ", start + 1, start + most + 1)
            cut = cut if cut > start else start + most
            spans.append((start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if end > start:
            spans.append((start, end))
    return spans


@dataclass
class Match:
    start: int
    end: int
    score: float    # 0-100


def best_match(candidates: list[str], source: str, start: int, end: int) -> Match | None:
    """The span of source[start:end] that best matches one of the candidates (an exact occurrence scores 100)."""
    from rapidfuzz import fuzz

    window, best = source[start:end], None
    # Case-blind where lowering keeps every character's place (it does not for a few, e.g. 'İ').
    folded = window.lower() if len(window.lower()) == len(window) else window
    for candidate in dict.fromkeys(c.strip(EDGE) for c in candidates):
        if not candidate:
            continue
        found = folded.find(candidate.lower() if folded is not window else candidate)
        if found >= 0:
            return Match(start + found, start + found + len(candidate), 100.0)
        aligned = fuzz.partial_ratio_alignment(candidate, window)
        if aligned is None or not aligned.score:
            continue
        s, e = aligned.dest_start, aligned.dest_end
        score, s, e = max((fuzz.ratio(candidate, window[a:b]), a, b)
                          for a in range(max(0, s - REFINE), s + REFINE + 1) for b in range(max(a + 1, e - REFINE), min(len(window), e + REFINE) + 1))
        while s < e and window[s] in EDGE:
            s += 1
        while e > s and window[e - 1] in EDGE:
            e -= 1
        if e > s and (best is None or score > best.score):
            best = Match(start + s, start + e, score)
    return best


def project(found: list[dict], back: dict[str, str], source: str, segment: tuple[int, int], min_score: float) -> tuple[list[dict], list[dict]]:
    """Entities of one segment's translation -> (projected onto the source, not projected). `found` are GLiNER's
    entities in the translation (offsets into it), `back` each entity text's translation into the source
    language. Two entities landing on overlapping source spans: the higher score stays, the other is not
    projected."""
    projected, missed = [], []
    for e in sorted(found, key=lambda e: -e["score"]):
        match = best_match([e["text"], back.get(e["text"], "")], source, *segment)
        if match is None or match.score < min_score:
            reason = "no match in the source" if match is None else f"best match {source[match.start:match.end]!r} scores {match.score:.0f} < {min_score:g}"
            missed.append({**e, "back_translation": back.get(e["text"], ""), "reason": reason})
        elif any(match.start < p["end"] and p["start"] < match.end for p in projected):
            missed.append({**e, "back_translation": back.get(e["text"], ""), "reason": f"lands on {source[match.start:match.end]!r}, taken by another entity"})
        else:
            projected.append({"start": match.start, "end": match.end, "text": source[match.start:match.end], "label": e["label"], "score": e["score"]})
    return sorted(projected, key=lambda e: e["start"]), sorted(missed, key=lambda e: e["start"])
