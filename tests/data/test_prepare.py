import json

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import TemplateError, resolve_template
from tunesmith.errors import TunesmithError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def qa_file(tmp_path):
    # 8 short answers and 3 long ones (the long ones are ~60 words).
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
    rows += [{"question": "Tell me a long story.", "answer": " ".join(["once upon a time"] * 15) + f" {i}"} for i in range(3)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def prepare(tokenizer, **data):
    cfg = DataConfig(**data)
    return prepare_data(cfg, tokenizer, resolve_template(cfg.template, tokenizer), seed=0)


def test_counts_and_stats_for_clean_data(smol_tokenizer, qa_file):
    train, evals, report = prepare(smol_tokenizer, train=[qa_file])
    assert len(train) == 11 and evals == []
    s = report.train
    assert (s.examples, s.kept, s.truncated, dict(s.dropped)) == (11, 11, 0, {})
    assert s.with_eos == 11 and s.template_checked == 11 and s.problems == {}
    assert s.trained_tokens == sum(sum(x != -100 for x in r["labels"]) for r in train)
    assert s.lengths["max"] == max(len(r["input_ids"]) for r in train)
    assert "⟦0<|im_end|>⟧" in report.first_example
    assert report.files[0]["read"] == 11 and report.files[0]["format"] == "question_answer"


def long_threshold(smol_tokenizer, qa_file):
    train, _, _ = prepare(smol_tokenizer, train=[qa_file])
    lengths = sorted(len(r["input_ids"]) for r in train)
    return lengths[7] + 1  # the 8 short examples fit, the 3 long ones do not


def test_drop_policy_counts_the_long_examples(smol_tokenizer, qa_file):
    limit = long_threshold(smol_tokenizer, qa_file)
    train, _, report = prepare(smol_tokenizer, train=[qa_file], max_length=limit, truncation="drop")
    assert len(train) == 8
    assert dict(report.train.dropped) == {"too_long": 3}
    assert json.loads(json.dumps(report.to_dict()))["train"]["dropped"] == {"too_long": 3}
    assert all(len(r["input_ids"]) <= limit for r in train)


def test_truncate_right_counts_and_reports_lost_eos(smol_tokenizer, qa_file):
    limit = long_threshold(smol_tokenizer, qa_file)
    train, _, report = prepare(smol_tokenizer, train=[qa_file], max_length=limit, truncation="truncate_right")
    assert len(train) == 11 and report.train.truncated == 3
    assert report.train.with_eos == 8  # the truncated three lost their end
    assert "lost their EOS to truncation" in render_markdown(report)
    assert max(len(r["input_ids"]) for r in train) == limit


def test_truncate_left_keeps_the_answer_end(smol_tokenizer, qa_file):
    limit = long_threshold(smol_tokenizer, qa_file)
    train, _, report = prepare(smol_tokenizer, train=[qa_file], max_length=limit, truncation="truncate_left")
    assert report.train.truncated == 3 and report.train.with_eos == 11
    assert all(r["labels"][-2:] == [smol_tokenizer.eos_token_id, -100] for r in train)  # <|im_end|> trained, the "\n" after it not


def test_truncation_error_names_the_row(smol_tokenizer, qa_file):
    with pytest.raises(TunesmithError, match=r"qa\.jsonl:9: \d+ tokens > data.max_length"):
        prepare(smol_tokenizer, train=[qa_file], max_length=long_threshold(smol_tokenizer, qa_file), truncation="error")


def test_truncation_that_leaves_nothing_trained_is_a_counted_drop(smol_tokenizer, tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(3)]
    rows += [{"question": "Read this: " + "blah " * 80, "answer": "ok"} for _ in range(2)]
    path = write_jsonl(tmp_path / "long_prompts.jsonl", rows)
    train, _, report = prepare(smol_tokenizer, train=[path], max_length=60, truncation="truncate_right")
    assert len(train) == 3 and report.train.truncated == 2
    assert dict(report.train.dropped) == {"no_trained_tokens_after_truncation": 2}
    with pytest.raises(TunesmithError, match="no training example left"):
        prepare(smol_tokenizer, train=[path], max_length=5, truncation="truncate_right")


def test_bad_rows_dropped_while_loading_reach_the_report(smol_tokenizer, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "a?", "answer": "b"}\n{not json\n{"question": "c?", "answer": ""}\n{"question": "d?", "answer": "e"}\n')
    train, _, report = prepare(smol_tokenizer, train=[str(path)], on_bad_row="drop")
    assert len(train) == 2
    assert report.files[0]["dropped"] == {"invalid_json": 1, "empty_content": 1}
    text = render_markdown(report)
    assert "invalid_json 1" in text and "mixed.jsonl:2" in text


def test_eval_split_is_seeded_and_disjoint(smol_tokenizer, qa_file):
    train, evals, report = prepare(smol_tokenizer, train=[qa_file], eval_split=0.25)
    assert (len(train), len(evals)) == (8, 3)
    again_train, again_eval, _ = prepare(smol_tokenizer, train=[qa_file], eval_split=0.25)
    assert again_eval == evals and again_train == train
    as_tuples = {tuple(r["input_ids"]) for r in train}
    assert not any(tuple(r["input_ids"]) in as_tuples for r in evals)


def test_system_prompt_is_rendered_into_every_example(smol_tokenizer, qa_file):
    train, _, _ = prepare(smol_tokenizer, train=[qa_file], system_prompt="Answer with a number.")
    text = smol_tokenizer.decode(train[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nAnswer with a number.<|im_end|>")


def test_planted_template_mismatch_stops_the_run(smol_tokenizer, qa_file, tmp_path):
    # Prompt ends with "A: " (trailing space): " once" is one token in training, but inference would
    # see " " then "once". Digits are split by this tokenizer, so only the 3 story answers (rows 9-11) trip it.
    path = tmp_path / "planted.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA: ' }}"
        "{% else %}{{ m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match=r"3 of 11 examples, first .*qa.jsonl:9: the prompt at inference ends in tokens"):
        prepare(smol_tokenizer, train=[qa_file], template=str(path))


def test_template_that_never_ends_a_turn_is_rejected(smol_tokenizer, qa_file, tmp_path):
    path = tmp_path / "no_eos.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA:' }}"
        "{% else %}{{ m['content'] + '\\n' }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match=r"ends an assistant reply with '\\n', which holds no token that ends a turn"):
        prepare(smol_tokenizer, train=[qa_file], template=str(path))


def test_plain_text_format(smol_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "The cat sat."}, {"text": "고양이가 앉았다."}])
    train, _, report = prepare(smol_tokenizer, train=[path])
    assert report.train.with_eos == 2
    assert train[0]["labels"] == train[0]["input_ids"] and train[0]["input_ids"][-1] == smol_tokenizer.eos_token_id


def test_a_special_token_the_template_ends_turns_with_is_found_and_trained(smol_tokenizer, qa_file, tmp_path):
    # Turns end with <|im_start|> (id 1): neither the EOS nor in a generation config, but the special token the
    # template writes after every reply, so it is the end of turn: a stop token, trained, and said in the preflight.
    path = tmp_path / "odd.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA:' }}"
        "{% else %}{{ m['content'] + '<|im_start|>' }}{% endif %}{% endfor %}"
    )
    template = resolve_template(str(path), smol_tokenizer)
    assert template.stop_token_ids == [1, smol_tokenizer.eos_token_id]
    train, _, report = prepare_data(DataConfig(train=[qa_file], template=str(path)), smol_tokenizer, template, seed=0)
    assert report.train.with_eos == 11
    assert all(r["labels"][-1] == 1 for r in train)
    assert "<|im_start|> (ends assistant turns in the template)" in render_markdown(report)
