"""The alignment formats (preference, unpaired, prompt): conversion, errors, loading and tokenization."""

import json

import pytest

from tests.data.test_formats import assistant, system, user
from tunesmith.config import DataConfig
from tunesmith.data.formats import DataError
from tunesmith.data.load import load_examples
from tunesmith.data.preference import PairExample, PromptExample, UnpairedExample, to_pair, to_prompt, to_unpaired
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.masks import tokenize_conversation
from tunesmith.data.templates import prompt_ids, resolve_template
from tunesmith.errors import TunesmithError

W = "pairs.jsonl:3"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_pair_with_string_prompt_and_replies():
    ex = to_pair({"prompt": "환불 되나요?", "chosen": "네, 가능합니다.", "rejected": "몰라요."}, {}, W)
    assert ex == PairExample([user("환불 되나요?")], "네, 가능합니다.", "몰라요.", W)


def test_pair_with_messages_and_system_prompt():
    row = {"prompt": [system("Be brief."), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}
    ex = to_pair(row, {}, W, system_prompt="ignored: the row has one")
    assert ex.prompt == [system("Be brief."), user("2+2?")] and (ex.chosen, ex.rejected) == ("4", "5")
    assert to_pair({"prompt": "q", "chosen": "a", "rejected": "b"}, {}, W, system_prompt="S").prompt == [system("S"), user("q")]


def test_implicit_prompt_is_the_shared_prefix_of_two_conversations():
    chosen = [user("Hi"), assistant("Hello!"), user("Refund?"), assistant("Sure, here is how.")]
    rejected = [user("Hi"), assistant("Hello!"), user("Refund?"), assistant("No.")]
    ex = to_pair({"chosen": chosen, "rejected": rejected}, {}, W)
    assert ex.prompt == chosen[:3] and (ex.chosen, ex.rejected) == ("Sure, here is how.", "No.")


def test_column_mapping_for_pairs():
    ex = to_pair({"q": "p", "good": "a", "bad": "b"}, {"prompt": "q", "chosen": "good", "rejected": "bad"}, W)
    assert (ex.prompt, ex.chosen, ex.rejected) == ([user("p")], "a", "b")


def test_unpaired_labels_accept_booleans_and_their_text_forms():
    for label, expected in ((True, True), ("false", False), ("1", True), (0, False), ("Yes", True)):
        ex = to_unpaired({"prompt": "p", "completion": "c", "label": label}, {}, W)
        assert ex == UnpairedExample([user("p")], "c", expected, W)


def test_prompt_rows_keep_their_other_columns():
    ex = to_prompt({"prompt": "2+2?", "answer": "4", "id": 7}, {}, W)
    assert ex == PromptExample([user("2+2?")], W, {"answer": "4", "id": 7})


BAD = [
    # (converter, row, reason, field, problem)
    (to_pair, {"prompt": "p", "chosen": "same", "rejected": "same "}, "identical_responses", "rejected", "identical to the chosen response"),
    (to_pair, {"prompt": "p", "chosen": " ", "rejected": "b"}, "empty_content", "chosen", "empty assistant reply"),
    (to_pair, {"prompt": "p", "chosen": "a", "rejected": ""}, "empty_content", "rejected", "empty assistant reply"),
    (to_pair, {"prompt": "", "chosen": "a", "rejected": "b"}, "empty_content", "prompt", "empty prompt"),
    (to_pair, {"prompt": [user(" ")], "chosen": "a", "rejected": "b"}, "empty_content", "prompt[0].content", "empty user message"),
    (to_pair, {"chosen": [user(""), assistant("a")], "rejected": [user(""), assistant("b")]}, "empty_content", "chosen[0].content", "empty user message"),
    (to_pair, {"prompt": "p", "chosen": "a"}, "missing_field", "rejected", "missing (the row has: prompt, chosen)"),
    (to_pair, {"prompt": "p", "chosen": 3, "rejected": "b"}, "wrong_type", "chosen", "expected a string or a list with one assistant message, found a number"),
    (to_pair, {"prompt": "p", "chosen": [user("a")], "rejected": "b"}, "bad_turn_order", "chosen", "expected exactly one assistant message, found user"),
    (to_pair, {"prompt": [user("p"), assistant("x")], "chosen": "a", "rejected": "b"}, "bad_turn_order", "prompt", "a prompt must end with a user turn, found assistant"),
    (to_pair, {"prompt": [user("p"), {"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "unknown_role", "prompt[1].role", "unknown role 'bot'"),
    (to_pair, {"chosen": "a", "rejected": "b"}, "wrong_type", "chosen", "without a prompt field, chosen and rejected must be whole conversations"),
    (to_pair, {"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}, "bad_turn_order", "chosen", "they share 0 of 2"),
    (to_unpaired, {"prompt": "p", "completion": "c", "label": "maybe"}, "wrong_type", "label", "expected true or false, found 'maybe'"),
    (to_unpaired, {"prompt": "p", "completion": "", "label": True}, "empty_content", "completion", "empty assistant reply"),
    (to_prompt, {"question": "p"}, "missing_field", "prompt", "missing (the row has: question)"),
    (to_prompt, {"prompt": [user("a"), assistant("b"), user("")]}, "empty_content", "prompt[2].content", "empty user message"),
    (to_unpaired, {"prompt": [user("")], "completion": "c", "label": True}, "empty_content", "prompt[0].content", "empty user message"),
]


@pytest.mark.parametrize("convert, row, reason, field, problem", BAD)
def test_bad_rows_name_the_field_and_reason(convert, row, reason, field, problem):
    with pytest.raises(DataError) as info:
        convert(row, {}, W)
    err = info.value
    assert (err.reason, err.field) == (reason, field)
    assert problem in err.problem and str(err).startswith(f"{W}: {field}: ")


def test_a_file_of_pairs_names_bad_lines_or_counts_them_as_drops(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "b", "chosen": "same", "rejected": "same"},
        {"prompt": "c", "chosen": "x"},
        {"prompt": "d", "chosen": "", "rejected": "y"},
        {"prompt": "e", "chosen": "x", "rejected": "z"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl:2: rejected: identical"):
        load_examples(path, formats=("preference",))
    examples, report = load_examples(path, formats=("preference",), on_bad_row="drop")
    assert [e.prompt[-1]["content"] for e in examples] == ["a", "e"]
    assert (report.read, report.kept, report.format) == (5, 2, "preference")
    assert report.dropped == {"identical_responses": 1, "missing_field": 1, "empty_content": 1}


def test_detection_only_among_the_methods_formats(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c", "label": True}])
    assert load_examples(path, formats=("unpaired", "preference"))[1].format == "unpaired"
    with pytest.raises(DataError, match="each format needs: preference: chosen, rejected"):
        load_examples(path, formats=("preference",))


def prepare(tokenizer, path, method, **data):
    cfg = DataConfig(train=[path], **data)
    return prepare_data(cfg, tokenizer, resolve_template(cfg.template, tokenizer), seed=0, method=method)


def test_pair_tokens_are_the_sft_training_span_of_each_reply(smol_tokenizer, tmp_path):
    """A reply is scored on exactly the tokens SFT would train for it: from the generation prompt to its end-of-turn."""
    rows = [{"prompt": [system("Be kind."), user("Hi"), assistant("Hello"), user("Refund?")], "chosen": "Yes, within 30 days.", "rejected": "No."}]
    train, _, report = prepare(smol_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), "dpo")
    row = train[0]
    template = resolve_template("model", smol_tokenizer)
    prompt = rows[0]["prompt"]
    assert row["prompt_ids"] == prompt_ids(template, smol_tokenizer, prompt)
    for key in ("chosen", "rejected"):
        sft = tokenize_conversation(template, smol_tokenizer, prompt + [assistant(rows[0][key])], trained_from=len(prompt))
        trained = [t for t, label in zip(sft.input_ids, sft.labels) if label != -100]
        assert row[f"{key}_ids"] == trained
        assert row[f"{key}_ids"][-1] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")  # EOS (= pad) scored, the newline after it not
    assert (report.kind, report.train.with_eos, report.train.problems) == ("preference", 1, {})
    text = render_markdown(report)
    assert "--- chosen ---\n⟦Yes, within 30 days.<|im_end|>⟧" in report.first_example
    assert "EOS/end-of-turn at the end of both the chosen and the rejected response: 1/1 (100.0%)" in text


def test_kto_reads_pairs_as_two_unpaired_examples(smol_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    train, _, report = prepare(smol_tokenizer, path, "kto")
    assert [r["label"] for r in train] == [True, False]
    assert train[0]["prompt_ids"] == train[1]["prompt_ids"] and train[0]["completion_ids"] != train[1]["completion_ids"]
    assert report.kind == "unpaired" and report.train.examples == 2


def test_prompt_rows_carry_their_columns_for_rewards(smol_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "answer": "4"}])
    train, _, report = prepare(smol_tokenizer, path, "grpo")
    assert train[0]["answer"] == "4" and train[0]["prompt"] == [user("2+2?")]
    assert smol_tokenizer.decode(train[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert "EOS/end-of-turn" not in render_markdown(report)


def long_pairs(tmp_path):
    # Token counts with SmolLM2's template: short prompt 31, long prompt 41, long reply 32 (end-of-turn included).
    rows = [{"prompt": "short", "chosen": "fine", "rejected": "nope"}, {"prompt": "long " * 10, "chosen": "a " * 30, "rejected": "b"}]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def test_pair_length_policies_count_every_example(smol_tokenizer, tmp_path):
    path = long_pairs(tmp_path)
    train, _, report = prepare(smol_tokenizer, path, "dpo", max_length=60)
    assert len(train) == 1 and report.train.dropped == {"too_long": 1}

    train, _, report = prepare(smol_tokenizer, path, "dpo", max_length=60, truncation="truncate_left")
    assert len(train) == 2 and report.train.truncated == 1
    assert all(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= 60 for r in train)
    assert train[1]["chosen_ids"][-1] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")  # replies kept whole

    train, _, report = prepare(smol_tokenizer, path, "dpo", max_length=60, truncation="truncate_right")
    assert report.train.truncated == 1 and report.train.with_eos == 1  # the cut reply lost its EOS: reported
    assert "lost their EOS to truncation" in render_markdown(report)

    with pytest.raises(TunesmithError, match=r"p.jsonl:2: \d+ tokens \(prompt \+ longest response\) > data.max_length 60"):
        prepare(smol_tokenizer, path, "dpo", max_length=60, truncation="error")


def test_a_template_that_never_ends_a_reply_is_rejected(smol_tokenizer, tmp_path):
    from tunesmith.data.templates import TemplateError

    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(TemplateError, match=r"ends an assistant reply with '\\n', which holds no token that ends a turn"):
        prepare(smol_tokenizer, data, "dpo", template=str(path))
