"""What a chat template writes after an assistant reply, found once by rendering a probe conversation.

A template says how a turn ends, and that is what generation must stop on: Qwen's ChatML writes
`<|im_end|>` although a base model's EOS is `<|endoftext|>`; Llama 3 writes `<|eot_id|>`; the built-in
ChatML on a tokenizer without `<|im_end|>` writes the text `<|im_end|>` and then EOS. Rendering
[user, assistant] with sentinel contents shows the text after the reply (`<|im_end|>\\n`): its first
special token ends the turn (it is trained and becomes a stop token), and any text before that token
(`<|im_end|>` written as plain text) is a stop text every engine cuts replies at.

Templates that write today's date (Llama 3.2, SmolLM3: `strftime_now(...)`) would render another
prompt on another day; `freeze_date` writes the day into the template text itself, so training,
evaluation, serving and the saved tokenizer all render the same prompt.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass

PROBE_QUESTION = "tunesmith0probe0question"
PROBE_REPLY = "tunesmith0probe0reply"

# strftime_now("%d %b %Y") with a literal format: the call transformers' template globals provide.
_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])([^"']*)\1\s*\)""")


@dataclass
class TurnEnd:
    text: str               # what the template writes after a reply, e.g. '<|im_end|>\n'
    token_id: int | None    # the first special (or known stop) token in it: the token that ends the turn
    marker: str             # non-blank text before that token ('<|im_end|>' on a tokenizer without it), or ''


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens, the additional ones (<|im_end|>, <|eot_id|>, ...) included."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def find_turn_end(source: str, tokenizer, known_stops: set[int]) -> TurnEnd | None:
    """The end of an assistant turn as `source` renders it; None when the probe cannot be rendered."""
    probe = [{"role": "user", "content": PROBE_QUESTION}, {"role": "assistant", "content": PROBE_REPLY}]
    try:
        text = tokenizer.apply_chat_template(probe, chat_template=source, tokenize=False)
    except Exception:  # a template that needs a system message or other roles: the data checks still run
        return None
    at = text.rfind(PROBE_REPLY)
    if at < 0:
        return None
    after = text[at + len(PROBE_REPLY) :]
    enc = tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)
    ends = special_ids(tokenizer) | known_stops
    for token, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
        if token in ends:
            return TurnEnd(after, token, after[:start].strip())
    return TurnEnd(after, None, after.strip())


def freeze_date(source: str, today: datetime.date) -> tuple[str, str | None]:
    """(source with every strftime_now("FORMAT") replaced by `today` so formatted, the ISO date or None)."""
    if not _STRFTIME_CALL.search(source):
        return source, None
    frozen = _STRFTIME_CALL.sub(lambda m: json.dumps(today.strftime(m.group(2))), source)
    return frozen, today.isoformat()


def writes_live_date(source: str) -> bool:
    """A strftime_now call freeze_date could not replace (its format is computed): the prompt follows the clock."""
    return "strftime_now(" in source
