"""Mixtures: data.train entries {path, task, weight, format, columns}, each source read its own way, tagged with
its task, resampled by its weight after the eval split, and counted per source and per task."""

import json

import pytest

from tunesmith.config import METHOD_FORMATS, DataConfig, validate
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data, read_mixture
from tunesmith.data.report import DataReport
from tunesmith.data.templates import resolve_template

SFT = METHOD_FORMATS["sft"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def sources(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews.jsonl", [{"review": f"좋아요 {i}", "label": "positive"} for i in range(10)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": f"Find names in: Kim {i}"}, {"role": "assistant", "content": "[Kim]"}]} for i in range(8)])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(4)])
    return reviews, chats, plain


def mixture(sources, **data):
    reviews, chats, plain = sources
    train = [
        {"path": reviews, "task": "SENTIMENT", "weight": 2.5, "format": "prompt_completion", "columns": {"prompt": "review", "completion": "label"}},
        {"path": chats, "task": "NER", "weight": 0.5},
        plain,
    ]
    return DataConfig.model_validate({"train": train, **data})


def test_each_source_gets_its_weight_its_format_and_its_task_tag(sources):
    examples, evals = read_mixture(mixture(sources), report := DataReport(), 0, SFT)
    users = [next(m["content"] for m in e.messages if m["role"] == "user") for e in examples]
    sentiment = [u for u in users if u.startswith("[TASK: SENTIMENT] 좋아요 ")]
    ner = [u for u in users if u.startswith("[TASK: NER] Find names in: Kim ")]
    assert (len(sentiment), len(ner), len(examples)) == (25, 4, 33)  # 2 x 10 + 5; 4 of 8; 4 untagged
    assert all(2 <= sentiment.count(u) <= 3 for u in sentiment)
    assert len(set(ner)) == 4  # a sample without replacement
    assert users[-4:] == ["q0", "q1", "q2", "q3"] and evals == []
    assert [(s["task"], s["read"], s["kept"], s["train"], s["eval"]) for s in report.sources] == [
        ("SENTIMENT", 10, 10, 25, 0), ("NER", 8, 8, 4, 0), (None, 4, 4, 4, 0)]
    assert report.tasks == {"SENTIMENT": {"train": 25, "eval": 0}, "NER": {"train": 4, "eval": 0}, "(no task)": {"train": 4, "eval": 0}}
    again, _ = read_mixture(mixture(sources), DataReport(), 0, SFT)
    assert [e.messages for e in again] == [e.messages for e in examples]  # seeded


def test_a_held_out_example_is_never_trained_on_even_when_its_source_is_repeated(sources):
    examples, evals = read_mixture(mixture(sources, eval_split=0.25), report := DataReport(), 3, SFT)
    held = {json.dumps(e.messages) for e in evals}
    assert held and not held & {json.dumps(e.messages) for e in examples}
    assert sum(s["eval"] for s in report.sources) == len(evals) == round(22 * 0.25)


def test_the_task_can_be_a_system_line_and_the_preflight_counts_per_source(sources, smol_tokenizer):
    cfg = mixture(sources, task_tag="system", system_prompt="Be brief.", task_template="<task={task}>")
    train, _, report = prepare_data(cfg, smol_tokenizer, resolve_template(cfg.template, smol_tokenizer), seed=0)
    assert "<|im_start|>system\nBe brief.\n<task=SENTIMENT><|im_end|>" in report.first_example
    assert len(train) == report.train.kept == 33
    text = render_markdown(report)
    assert "## Mixture" in text and "| SENTIMENT | 2.5 | 10 | 10 | 25 | 0 |" in text
    assert "- per task: SENTIMENT: train 25, eval 0; NER: train 4, eval 0; (no task): train 4, eval 0" in text


def test_plain_paths_keep_the_report_as_it_was(sources, smol_tokenizer):
    cfg = DataConfig(train=[sources[2]])
    _, _, report = prepare_data(cfg, smol_tokenizer, resolve_template(cfg.template, smol_tokenizer), seed=0)
    assert report.sources == [] and "## Mixture" not in render_markdown(report)


def test_a_recipe_takes_sources_and_names_a_bad_one():
    recipe = validate({"model": {"path": "org/m"}, "data": {"train": [{"path": "a.jsonl", "task": "x", "weight": 2}, "b.jsonl"]}})
    assert [s.path for s in recipe.data.sources("train")] == ["a.jsonl", "b.jsonl"] and recipe.data.mixture
    with pytest.raises(Exception, match=r"data.train\[0\].wieght: unknown key \(allowed here: path, task, weight, format, columns\)"):
        validate({"model": {"path": "org/m"}, "data": {"train": [{"path": "a.jsonl", "wieght": 2}]}})
    with pytest.raises(Exception, match=r"data.eval\[0\].weight: eval data is not resampled"):
        validate({"model": {"path": "org/m"}, "data": {"train": ["a"], "eval": [{"path": "e.jsonl", "weight": 2}]}})
    with pytest.raises(Exception, match=r"data.train\[0\].format: 'preference' is not one of auto, alpaca"):
        validate({"model": {"path": "org/m"}, "data": {"train": [{"path": "a.jsonl", "format": "preference"}]}})
