import pickle

import pytest

from tunesmith.data.formats import FORMATS, DataError, Example, detect_format, to_example

W = "train.jsonl:7"


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(content):
    return {"role": "system", "content": content}


NORMALISED = [
    pytest.param(
        "alpaca",
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        [user("Translate to French.\n\nGood morning"), assistant("Bonjour")],
        id="alpaca-input",
    ),
    pytest.param(
        "alpaca",
        {"instruction": "Name a prime.", "input": "", "output": "11"},
        [user("Name a prime."), assistant("11")],
        id="alpaca-empty-input",
    ),
    pytest.param(
        "alpaca",
        {"instruction": "Name a prime.", "input": None, "output": "11", "system": "", "history": None},
        [user("Name a prime."), assistant("11")],
        id="alpaca-null-optionals",
    ),
    pytest.param(
        "alpaca",
        {
            "instruction": "And of Germany?",
            "output": "Berlin.",
            "system": "You are a tutor.",
            "history": [["Capital of France?", "Paris."], ["Of Spain?", "Madrid."]],
        },
        [
            system("You are a tutor."),
            user("Capital of France?"),
            assistant("Paris."),
            user("Of Spain?"),
            assistant("Madrid."),
            user("And of Germany?"),
            assistant("Berlin."),
        ],
        id="alpaca-system-history",
    ),
    pytest.param(
        "messages",
        {"messages": [system("Be kind."), user("안녕?"), assistant("안녕하세요!"), user("Bye"), assistant("Bye!")]},
        [system("Be kind."), user("안녕?"), assistant("안녕하세요!"), user("Bye"), assistant("Bye!")],
        id="messages",
    ),
    pytest.param(
        "messages",
        {"messages": [{"role": "user", "content": "Hi", "name": "bob"}, {"role": "assistant", "content": "Yo", "weight": 1}]},
        [user("Hi"), assistant("Yo")],
        id="messages-extra-keys-dropped",
    ),
    pytest.param(
        "sharegpt",
        {"system": "Math tutor.", "conversations": [{"from": "human", "value": "2*3?"}, {"from": "gpt", "value": "6"}]},
        [system("Math tutor."), user("2*3?"), assistant("6")],
        id="sharegpt-top-system",
    ),
    pytest.param(
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "French."},
                {"from": "human", "value": "Hello"},
                {"from": "gpt", "value": "Bonjour"},
                {"from": "user", "value": "Bye"},
                {"from": "assistant", "value": "Au revoir"},
            ]
        },
        [system("French."), user("Hello"), assistant("Bonjour"), user("Bye"), assistant("Au revoir")],
        id="sharegpt-aliases",
    ),
    pytest.param(
        "prompt_completion",
        {"prompt": "Classify: refund", "completion": "billing"},
        [user("Classify: refund"), assistant("billing")],
        id="prompt-completion-strings",
    ),
    pytest.param(
        "prompt_completion",
        {"prompt": [system("Classify."), user("refund")], "completion": [assistant("billing")]},
        [system("Classify."), user("refund"), assistant("billing")],
        id="prompt-completion-conversational",
    ),
    pytest.param(
        "question_answer",
        {"question": "Largest planet?", "answer": "Jupiter."},
        [user("Largest planet?"), assistant("Jupiter.")],
        id="question-answer",
    ),
]


@pytest.mark.parametrize("fmt, row, expected", NORMALISED)
def test_each_format_normalises_to_exact_messages(fmt, row, expected):
    assert to_example(row, fmt, {}, W) == Example(messages=expected, text=None, where=W)


@pytest.mark.parametrize("fmt, row, expected", NORMALISED)
def test_each_format_is_detected(fmt, row, expected):
    assert detect_format(row, {}, W) == fmt


def test_text_format():
    assert to_example({"text": "Line one\nline two\n"}, "text", {}, W) == Example(messages=None, text="Line one\nline two\n", where=W)
    assert detect_format({"text": "x"}, {}, W) == "text"


def test_content_is_kept_exactly():
    row = {"messages": [user("  padded  "), assistant("reply\n")]}
    assert to_example(row, "messages", {}, W).messages == [user("  padded  "), assistant("reply\n")]


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"instruction": "i", "output": "o", "text": "### Instruction: i"}, "alpaca"),  # a rendered text column is extra
        ({"messages": [], "prompt": "p", "prompt_id": "1"}, "messages"),
        ({"text": "t", "messages": None}, "text"),  # null values count as absent (Parquet fills missing columns)
    ],
)
def test_detection_precedence(row, fmt):
    assert detect_format(row, {}, W) == fmt


def test_detection_failure_names_keys_found_and_needed():
    with pytest.raises(DataError) as info:
        detect_format({"ticket": "t", "label": "l"}, {}, W)
    err = info.value
    assert err.reason == "unknown_format" and err.where == W and err.field is None
    message = str(err)
    assert message.startswith("train.jsonl:7: cannot tell the format from the keys [ticket, label]")
    assert "alpaca: instruction, output" in message and "prompt_completion: prompt, completion" in message
    assert "text: text" in message


def test_column_mapping():
    columns = {"prompt": "ticket", "completion": "category"}
    row = {"ticket": "card charged twice", "category": "billing"}
    assert detect_format(row, columns, W) == "prompt_completion"
    assert to_example(row, "prompt_completion", columns, W).messages == [user("card charged twice"), assistant("billing")]
    # Errors name the user's column, not the canonical field.
    with pytest.raises(DataError) as info:
        to_example({"ticket": "t"}, "prompt_completion", columns, W)
    assert str(info.value) == "train.jsonl:7: category: missing (the row has: ticket)"
    with pytest.raises(DataError, match="needs: alpaca: instruction, output; .*prompt_completion: ticket, category"):
        detect_format({"prompt": "p", "completion": "c"}, columns, W)


def test_mapped_messages_column():
    row = {"conversations": [user("Hi"), assistant("Hello")]}
    example = to_example(row, "messages", {"messages": "conversations"}, W)
    assert example.messages == [user("Hi"), assistant("Hello")]


def test_system_prompt_is_inserted_when_missing():
    row = {"question": "Q", "answer": "A"}
    assert to_example(row, "question_answer", {}, W, system_prompt="Be brief.").messages == [
        system("Be brief."),
        user("Q"),
        assistant("A"),
    ]


def test_system_prompt_does_not_override_existing_system_turn():
    row = {"messages": [system("Own."), user("Q"), assistant("A")]}
    assert to_example(row, "messages", {}, W, system_prompt="Default.").messages == [system("Own."), user("Q"), assistant("A")]
    row = {"instruction": "Q", "output": "A", "system": "Own."}
    assert to_example(row, "alpaca", {}, W, system_prompt="Default.").messages[0] == system("Own.")


def test_system_prompt_not_applied_to_text():
    assert to_example({"text": "plain"}, "text", {}, W, system_prompt="Default.") == Example(None, "plain", W)


BAD = [
    # (format, row, reason, field, problem)
    ("alpaca", {"instruction": "i"}, "missing_field", "output", "missing (the row has: instruction)"),
    ("alpaca", {"instruction": "i", "output": 42}, "wrong_type", "output", "expected a string, found a number"),
    ("alpaca", {"instruction": "i", "output": "o", "input": ["x"]}, "wrong_type", "input", "expected a string, found a list"),
    ("alpaca", {"instruction": "i", "output": "o", "history": [["q"]]}, "wrong_type", "history[0]", "expected an [instruction, output] pair, found a list of 1"),
    ("alpaca", {"instruction": "i", "output": "o", "history": [["q", 1]]}, "wrong_type", "history[0][1]", "expected a string, found a number"),
    ("alpaca", {"instruction": "i", "output": "o", "history": [["q", ""]]}, "empty_content", "history[0][1]", "empty assistant reply"),
    ("alpaca", {"instruction": "i", "output": " \n"}, "empty_content", "output", "empty assistant reply"),
    ("alpaca", {"instruction": " ", "output": "o"}, "empty_content", "instruction", "empty user message"),
    ("alpaca", {"instruction": "i", "output": "o", "history": [["", "a"]]}, "empty_content", "history[0][0]", "empty user message"),
    ("messages", {"messages": "hi"}, "wrong_type", "messages", "expected a list of messages, found a string"),
    ("messages", {"messages": [user("a"), "b"]}, "wrong_type", "messages[1]", "expected an object with role and content, found a string"),
    ("messages", {"messages": [user("a"), {"role": "assistant"}]}, "missing_field", "messages[1].content", "missing (the message has: role)"),
    ("messages", {"messages": [user("a"), assistant("b"), user("c"), {"role": "assistant", "content": ["x"]}]}, "wrong_type", "messages[3].content", "expected a string, found a list"),
    ("messages", {"messages": [user("a"), {"role": None, "content": "b"}]}, "wrong_type", "messages[1].role", "expected a string, found null"),
    ("messages", {"messages": [user("a"), assistant("b"), {"role": "function", "content": "c"}]}, "unknown_role", "messages[2].role", "unknown role 'function'; allowed: system, user, assistant, tool"),
    ("messages", {"messages": [user("a"), assistant("b"), {"role": "tool", "content": "c"}]}, "unmatched_tool_result", "messages[2].role",
     "a tool message without a matching call: it must follow an assistant message with tool_calls"),
    ("messages", {"messages": [user("a"), assistant("")]}, "empty_content", "messages[1].content", "empty assistant reply"),
    ("messages", {"messages": [user(""), assistant("b")]}, "empty_content", "messages[0].content", "empty user message"),
    ("messages", {"messages": [user("a"), assistant("b"), user(" \n"), assistant("c")]}, "empty_content", "messages[2].content", "empty user message"),
    ("messages", {"messages": []}, "no_assistant_turn", "messages", "no assistant turn to train on"),
    ("messages", {"messages": [system("s"), user("a")]}, "no_assistant_turn", "messages", "no assistant turn to train on"),
    ("messages", {"messages": [user("a"), system("s"), assistant("b")]}, "bad_turn_order", "messages[1].role", "a system message is allowed only as the first message"),
    ("messages", {"messages": [user("a"), user("b"), assistant("c")]}, "bad_turn_order", "messages[1].role", "two user turns in a row"),
    ("messages", {"messages": [user("a"), assistant("b"), assistant("c")]}, "bad_turn_order", "messages[2].role", "two assistant turns in a row"),
    ("messages", {"messages": [system("s"), assistant("b")]}, "bad_turn_order", "messages[1].role", "the conversation must start with a user turn, found assistant"),
    ("messages", {"messages": [user("a"), assistant("b"), user("c")]}, "bad_turn_order", "messages[2].role", "the last turn must be from the assistant, found user"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}, "unknown_role", "conversations[1].from", "unknown role 'bot'; allowed: human, gpt, system, user, assistant, function_call, observation"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}]}, "wrong_type", "conversations[1].value", "expected a string, found a number"),
    ("sharegpt", {"conversations": [user("a"), assistant("b")]}, "missing_field", "conversations[0].from", "missing (the message has: role, content); for role/content messages set data.format: messages and data.columns: {messages: conversations}"),
    ("prompt_completion", {"prompt": "p", "completion": [assistant("c")]}, "wrong_type", "completion", "expected a string like prompt, found a list"),
    ("prompt_completion", {"prompt": 1, "completion": "c"}, "wrong_type", "prompt", "expected a string or a list of messages, found a number"),
    ("prompt_completion", {"prompt": [user("p")], "completion": [user("c")]}, "bad_turn_order", "completion[0].role", "completion messages must be assistant turns, found user"),
    ("prompt_completion", {"prompt": [user("p")], "completion": []}, "no_assistant_turn", "completion", "no assistant turn to train on"),
    ("question_answer", {"question": "q", "answer": True}, "wrong_type", "answer", "expected a string, found a boolean"),
    ("question_answer", {"answer": "a"}, "missing_field", "question", "missing (the row has: answer)"),
    ("question_answer", {"question": "", "answer": "a"}, "empty_content", "question", "empty user message"),
    ("prompt_completion", {"prompt": "\t", "completion": "c"}, "empty_content", "prompt", "empty user message"),
    ("prompt_completion", {"prompt": [user("")], "completion": [assistant("c")]}, "empty_content", "prompt[0].content", "empty user message"),
    ("sharegpt", {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "b"}]}, "empty_content", "conversations[0].value", "empty user message"),
    ("text", {"text": "  \n"}, "empty_content", "text", "empty text"),
    ("text", {"text": None}, "wrong_type", "text", "expected a string, found null"),
    ("text", ["not", "an", "object"], "wrong_type", None, "expected an object, found a list"),
]


@pytest.mark.parametrize("fmt, row, reason, field, problem", BAD)
def test_bad_rows_name_line_field_and_reason(fmt, row, reason, field, problem):
    with pytest.raises(DataError) as info:
        to_example(row, fmt, {}, W)
    err = info.value
    assert (err.where, err.field, err.reason, err.problem) == (W, field, reason, problem)
    assert str(err) == (f"{W}: {field}: {problem}" if field else f"{W}: {problem}")


def test_data_error_hint_pickle_and_types():
    err = DataError(W, "messages[2].role", "unknown role 'tool'", "unknown_role", hint="set data.on_bad_row: drop")
    assert str(err) == "train.jsonl:7: messages[2].role: unknown role 'tool'\n  hint: set data.on_bad_row: drop"
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.reason, copy.field) == (str(err), "unknown_role", "messages[2].role")


def test_unknown_format_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown format 'chatml'; known formats: " + ", ".join(FORMATS)):
        to_example({"text": "x"}, "chatml", {}, W)


def test_prompt_completion_trains_only_the_completion_turns():
    from tunesmith.data.formats import to_example

    row = {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    example = to_example(row, "prompt_completion", {}, "f.jsonl:1", system_prompt="Be brief.")
    assert example.trained_from == 4 and example.messages[4] == {"role": "assistant", "content": "4"}
    plain = to_example({"prompt": "Hi", "completion": "Hello"}, "prompt_completion", {}, "f.jsonl:2")
    assert plain.trained_from == 0  # nothing to exclude
    assert to_example({"question": "a", "answer": "b"}, "question_answer", {}, "f.jsonl:3").trained_from == 0


def test_an_assistant_message_may_carry_its_reasoning():
    row = {"messages": [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "5", "reasoning": "Two plus three is five."},
    ]}
    example = to_example(row, "messages", {}, "r.jsonl:1")
    assert example.messages[1] == {"role": "assistant", "content": "5", "reasoning": "Two plus three is five."}
    assert "reasoning" not in example.messages[0]


@pytest.mark.parametrize("message, problem", [
    ({"role": "user", "content": "hi", "reasoning": "x"}, "messages[0].reasoning: only assistant messages carry reasoning"),
    ({"role": "assistant", "content": "hi", "reasoning": 3}, "messages[0].reasoning: expected a string, found a number"),
])
def test_a_bad_reasoning_field_names_the_message(message, problem):
    turns = [message] if message["role"] == "assistant" else [message, {"role": "assistant", "content": "ok"}]
    with pytest.raises(DataError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        to_example({"messages": turns}, "messages", {}, "r.jsonl:1")
