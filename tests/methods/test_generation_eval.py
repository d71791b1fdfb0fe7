"""Generation metrics during training: logged to metrics.jsonl at each evaluation, usable to pick the best checkpoint."""

import json

import pytest

from tests.eval.conftest import train_tiny_run
from tunesmith.config import validate
from tunesmith.errors import ConfigError
from tunesmith.methods.common import best_metric, generation_score


def test_generation_metric_is_logged_and_selects_the_best_checkpoint(stories_path, tickets_file, tmp_path):
    gen = {"metric": "chrf", "samples": 4, "max_new_tokens": 3, "select_best": True}
    run = train_tiny_run(stories_path, tickets_file, tmp_path / "run", max_steps=3, save_steps=1, keep_best=True, save_total_limit=3,
                         sections={"generation_eval": gen})
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval_chrf"] for r in records if "eval_chrf" in r}
    assert sorted(logged) == [1, 2, 3]
    assert all(0.0 <= v <= 100.0 for v in logged.values())
    state = json.loads((run / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_metric"] == max(logged.values())
    best_step = min(step for step, v in logged.items() if v == max(logged.values()))
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")


def test_generation_score_matches_eval_scoring():
    assert generation_score("exact_match", ["Refund.", "x"], ["refund", "billing"]) == 0.5
    outputs = ["it is refund", "billing", "refund", "no idea"]
    assert generation_score("accuracy", outputs, ["refund", "billing", "refund", "billing"]) == 0.75
    assert generation_score("rougeL", ["나는 학교에 간다"], ["나는 집에 간다"]) == pytest.approx(2 / 3)


def test_config_checks_name_the_keys(tmp_path):
    base = {"model": {"path": "org/m"}, "data": {"train": "t.jsonl"}}
    with pytest.raises(ConfigError, match="generation_eval.metric needs evaluation data"):
        validate({**base, "generation_eval": {"metric": "exact_match"}})
    with pytest.raises(ConfigError, match="generation_eval.select_best: needs generation_eval.metric"):
        validate({**base, "generation_eval": {"select_best": True}})
    with pytest.raises(ConfigError, match=r"generation_eval.metric: 'f1' is not one of"):
        validate({**base, "generation_eval": {"metric": "f1"}})
    recipe = validate({**base, "data": {"train": "t.jsonl", "eval_split": 0.2}, "generation_eval": {"metric": "accuracy", "select_best": True}})
    assert best_metric(recipe) == {"metric_for_best_model": "eval_accuracy", "greater_is_better": True}
    assert best_metric(validate(base)) == {"metric_for_best_model": "eval_loss", "greater_is_better": False}
