"""The built-in GRPO reward functions and loading the user's own."""

import pytest

from tunesmith import rewards
from tunesmith.config import RewardFunction
from tunesmith.errors import TunesmithError

P = [[{"role": "user", "content": "q"}]] * 3


def test_exact_match_compares_normalised_first_lines_with_the_column():
    fn = rewards.exact_match("answer")
    assert fn(P, ["Billing.", " refund\nbecause...", "환불"], answer=["billing", "Refund", "배송"]) == [1.0, 1.0, 0.0]
    assert rewards.exact_match("answer", first_line=False)(P[:1], ["refund\nmore"], answer=["refund"]) == [0.0]
    with pytest.raises(TunesmithError, match="the data has no column 'answer' \\(columns: label\\)"):
        fn(P[:1], ["x"], label=["x"])


def test_regex_and_length():
    assert rewards.regex(r"^\d+$")(P, ["42", "4 2", ""], ) == [1.0, 0.0, 0.0]
    assert rewards.length(10)(P, ["short", "x" * 10, "x" * 60]) == [0.0, 0.0, -0.5]


def test_python_function_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("def r(prompts, completions, **columns):\n    return [float(len(c)) for c in completions]\n")
    assert rewards.python_function(f"{tmp_path / 'mine.py'}:r")(P[:2], ["ab", "c"]) == [2.0, 1.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rewards.build(RewardFunction(type="python", function="mine:r"))(P[:1], ["abc"]) == [3.0]
    for spec, message in (("mine", "expected 'module:function'"), ("nope_module:r", "cannot import nope_module"),
                          ("mine:missing", "has no function 'missing'"), (f"{tmp_path / 'x.py'}:r", "not found")):
        with pytest.raises(TunesmithError, match=message):
            rewards.python_function(spec)


def test_trl_adapter_passes_reply_text_and_data_columns_only():
    seen = {}

    def fn(prompts, completions, **columns):
        seen.update(columns)
        return [float(c == "yes") for c in completions]

    adapted = rewards.for_trl(fn)
    out = adapted(P[:2], [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]],
                  answer=["a", "b"], trainer_state=object(), log_metric=print, completion_ids=[[1], [2]])
    assert out == [1.0, 0.0] and seen == {"answer": ["a", "b"]} and adapted.__name__ == "fn"


def test_a_completion_column_reaches_reward_functions_through_trl():
    """TRL drops a data column named `completion` (its own name for replies); it travels renamed."""
    rows = rewards.rows_for_trl([{"prompt": P[0], "completion": "billing", "lang": "en"}])
    assert "completion" not in rows[0]
    trl_kwargs = {k: [v] for k, v in rows[0].items() if k not in ("prompt", "completion")}  # what TRL passes on
    fn = rewards.for_trl(rewards.exact_match("completion"))
    assert fn(P[:1], [[{"role": "assistant", "content": "Billing"}]], **trl_kwargs) == [1.0]


def test_reward_model_reward_scores_with_the_reward_runs_template(reward_run):
    from tunesmith.models.reward import load_reward_model, score

    fn = rewards.build(RewardFunction(type="reward_model", path=reward_run))
    prompts = [[{"role": "user", "content": "Capital of Peru?"}]] * 2
    replies = ["The capital is nice.", "No."]
    assert fn(prompts, replies) == pytest.approx(score(load_reward_model(reward_run), prompts, replies))
    assert fn.__name__ == "reward_model_run"


def test_replies_reach_rewards_cut_at_the_templates_stop_texts():
    # ChatML on a tokenizer without <|im_end|>: the policy writes the marker as text before its EOS.
    fn = rewards.for_trl(rewards.exact_match("answer"), ["<|im_end|>"])
    assert fn(P[:1], [[{"role": "assistant", "content": "billing<|im_end|>"}]], answer=["billing"]) == [1.0]
