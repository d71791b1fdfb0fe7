"""Data formats of the alignment methods: preference pairs, unpaired labelled examples, prompts.

| format     | fields                                          | read by         | becomes            |
|------------|-------------------------------------------------|-----------------|--------------------|
| preference | prompt, chosen*, rejected*                      | dpo, reward, kto| PairExample        |
| unpaired   | prompt*, completion*, label* (true/false)       | kto             | UnpairedExample    |
| prompt     | prompt*, any other columns                      | grpo, ppo       | PromptExample      |

`prompt` is a string (one user turn) or a list of {role, content} messages ending with a user turn
(an optional system message first). A response (`chosen`, `rejected`, `completion`) is a string or a
list holding one assistant message. Without `prompt`, `chosen` and `rejected` are whole
conversations that share everything but their last assistant turn (the "implicit prompt" form);
the shared part becomes the prompt.

A pair whose chosen and rejected responses are identical teaches nothing and is an error
(`identical_responses`), or a counted drop with `data.on_bad_row: drop`, like every other bad row.
A prompt row keeps its other columns (`extra`): reward functions read their references there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.formats import (
    MESSAGE_ROLES,
    DataError,
    Turn,
    as_message,
    check_not_empty,
    check_turns,
    parse_turns,
    required_field,
    type_name,
    with_system,
)

Messages = list[dict[str, str]]

# CSV and spreadsheets write booleans as text.
_LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


@dataclass
class PairExample:
    prompt: Messages        # ends with a user turn
    chosen: str             # the preferred assistant reply
    rejected: str
    where: str


@dataclass
class UnpairedExample:
    prompt: Messages
    completion: str
    label: bool             # True: desirable
    where: str


@dataclass
class PromptExample:
    prompt: Messages
    where: str
    extra: dict = field(default_factory=dict)   # the row's other columns, for reward functions


def to_pair(row: dict, columns: dict[str, str], where: str, system_prompt: str | None = None) -> PairExample:
    ckey, chosen = required_field(row, "chosen", columns, where)
    rkey, rejected = required_field(row, "rejected", columns, where)
    pkey = columns.get("prompt", "prompt")
    if row.get(pkey) is not None:
        prompt = _prompt_turns(row[pkey], pkey, where)
        chosen_text = _response(chosen, ckey, where)
        rejected_text = _response(rejected, rkey, where)
    else:
        prompt, chosen_text, rejected_text = _split_implicit(chosen, rejected, ckey, rkey, where)
    for key, text in ((ckey, chosen_text), (rkey, rejected_text)):
        check_turns(prompt + [Turn("assistant", text, key, key)], key, where)
    if chosen_text.strip() == rejected_text.strip():
        raise DataError(where, rkey, "identical to the chosen response: the pair teaches nothing", "identical_responses")
    return PairExample(_messages(prompt, system_prompt), chosen_text, rejected_text, where)


def to_unpaired(row: dict, columns: dict[str, str], where: str, system_prompt: str | None = None) -> UnpairedExample:
    pkey, prompt = required_field(row, "prompt", columns, where)
    ckey, completion = required_field(row, "completion", columns, where)
    lkey, label = required_field(row, "label", columns, where)
    turns = _prompt_turns(prompt, pkey, where)
    text = _response(completion, ckey, where)
    check_turns(turns + [Turn("assistant", text, ckey, ckey)], ckey, where)
    return UnpairedExample(_messages(turns, system_prompt), text, _label(label, lkey, where), where)


def to_prompt(row: dict, columns: dict[str, str], where: str, system_prompt: str | None = None) -> PromptExample:
    pkey, prompt = required_field(row, "prompt", columns, where)
    turns = _prompt_turns(prompt, pkey, where)
    extra = {key: value for key, value in row.items() if key != pkey}
    return PromptExample(_messages(turns, system_prompt), where, extra)


PAIR_CONVERTERS = {"preference": to_pair, "unpaired": to_unpaired, "prompt": to_prompt}


def unpair(example: PairExample) -> list[UnpairedExample]:
    """A preference pair as two KTO examples: the chosen reply desirable, the rejected one not."""
    return [
        UnpairedExample(example.prompt, example.chosen, True, example.where),
        UnpairedExample(example.prompt, example.rejected, False, example.where),
    ]


def conversation_of(example: PairExample | UnpairedExample | PromptExample) -> Messages:
    """The messages an example stands for: the prompt and the preferred (or only) reply; a bare prompt alone."""
    if isinstance(example, PairExample):
        return [*example.prompt, {"role": "assistant", "content": example.chosen}]
    if isinstance(example, UnpairedExample):
        return [*example.prompt, {"role": "assistant", "content": example.completion}]
    return list(example.prompt)


def _prompt_turns(prompt, key: str, where: str) -> list[Turn]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(where, key, "empty prompt", "empty_content")
        return [Turn("user", prompt, key, key)]
    turns = parse_turns(prompt, key, ("role", "content"), MESSAGE_ROLES, where)
    if not turns or turns[-1][0] != "user":
        found = turns[-1][0] if turns else "no message"
        raise DataError(where, key, f"a prompt must end with a user turn, found {found}", "bad_turn_order")
    for turn in turns:
        check_not_empty(turn, where)
    return turns


def _response(value, key: str, where: str) -> str:
    """A reply: a string, or a list holding exactly one assistant message."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise DataError(where, key, f"expected a string or a list with one assistant message, found {type_name(value)}", "wrong_type")
    turns = parse_turns(value, key, ("role", "content"), MESSAGE_ROLES, where)
    if len(turns) != 1 or turns[0][0] != "assistant":
        roles = ", ".join(t[0] for t in turns) or "nothing"
        raise DataError(where, key, f"expected exactly one assistant message, found {roles}", "bad_turn_order")
    if turns[0].reasoning:
        problem = "a response's reasoning field is not read in preference data: write the reasoning into its content the way the model writes it"
        raise DataError(where, f"{key}[0].reasoning", problem, "unsupported_field")
    return turns[0].content


def _split_implicit(chosen, rejected, ckey: str, rkey: str, where: str) -> tuple[list[Turn], str, str]:
    """Whole conversations sharing a prefix: the prefix is the prompt, the differing last turns the replies."""
    for key, value in ((ckey, chosen), (rkey, rejected)):
        if not isinstance(value, list):
            raise DataError(
                where, key, f"without a prompt field, chosen and rejected must be whole conversations (lists of messages), found {type_name(value)}",
                "wrong_type",
            )
    c_turns = parse_turns(chosen, ckey, ("role", "content"), MESSAGE_ROLES, where)
    r_turns = parse_turns(rejected, rkey, ("role", "content"), MESSAGE_ROLES, where)
    shared = 0
    while shared < min(len(c_turns), len(r_turns)) and c_turns[shared][:2] == r_turns[shared][:2]:
        shared += 1
    for key, turns in ((ckey, c_turns), (rkey, r_turns)):
        if len(turns) - shared != 1 or turns[-1][0] != "assistant":
            raise DataError(
                where, key,
                f"chosen and rejected must share every message but their last assistant turn (they share {shared} of {len(turns)})",
                "bad_turn_order",
            )
    if shared == 0:
        raise DataError(where, ckey, "no shared prompt: the conversations differ from their first message", "bad_turn_order")
    return c_turns[:shared], c_turns[-1][1], r_turns[-1][1]


def _label(value, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in _LABELS:
        return _LABELS[str(value).strip().lower()]
    raise DataError(where, key, f"expected true or false, found {value!r}", "wrong_type")


def _messages(turns: list[Turn], system_prompt: str | None) -> Messages:
    return with_system([as_message(turn) for turn in turns], system_prompt)
