"""Token ids to text while they stream in: incremental decoding and stop strings.

Engines produce token ids; this turns them into the text deltas a client sees. Text that might be the
start of a stop string is held back until it is clear it is not, so a stop string never leaks into the
output, and a multi-byte character split across tokens is held until it is complete.
"""

from __future__ import annotations


class TextStream:
    """`keep`: special tokens whose text stays in the output (tool-call markers); other special tokens are dropped."""

    def __init__(self, tokenizer, stop: list[str] | None = None, keep: dict[int, str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.keep = keep or {}
        self.ids: list[int] = []
        self.text = ""          # decoded text so far, cut at a stop string once one is found
        self.sent = 0           # characters of self.text already handed out
        self.stopped = False    # a stop string was found

    def add(self, ids: list[int]) -> str:
        """The new text that is safe to send after these tokens ('' when everything new is held back)."""
        if self.stopped:
            return ""
        self.ids += ids
        text = self._decode()
        cut = first_stop(text, self.stop, start=max(0, self.sent - max((len(s) for s in self.stop), default=0)))
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self.flush()
        self.text = text
        # A trailing U+FFFD is usually a multi-byte character whose last bytes are still to come.
        incomplete = len(text) - len(text.rstrip("\ufffd"))
        safe = len(text) - max(held_back(text, self.stop), incomplete)
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        return delta

    def _decode(self) -> str:
        return decode(self.tokenizer, self.ids, self.keep)

    def flush(self) -> str:
        """Everything not yet sent: call when generation has ended."""
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


def decode(tokenizer, ids: list[int], keep: dict[int, str] | None = None) -> str:
    """Token ids as text without special tokens, except those in `keep` (token id -> its text): the decoding of
    the server and of `tunesmith eval` alike."""
    if not keep or not any(i in keep for i in ids):
        return tokenizer.decode(ids, skip_special_tokens=True)
    parts, run = [], []
    for i in ids:
        if i in keep:
            parts += [tokenizer.decode(run, skip_special_tokens=True), keep[i]]
            run = []
        else:
            run.append(i)
    return "".join([*parts, tokenizer.decode(run, skip_special_tokens=True)])


def first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    """Index where the earliest stop string begins, searching from `start`."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
