"""`tunesmith eval select`: few-shot prompts from unscored rows, one ranking for all candidates."""

import json

import pytest

from tests.eval.conftest import TICKETS
from tunesmith.cli import main
from tunesmith.errors import TunesmithError
from tunesmith.eval.evaluate import load_eval_data
from tunesmith.eval.select import few_shot_data, split_shots


def test_shots_are_not_scored_and_precede_every_prompt(tickets_file):
    shots, scored = split_shots(12, 3, seed=0)
    assert len(shots) == 3 and len(scored) == 9 and not set(shots) & set(scored)
    data = few_shot_data(load_eval_data(str(tickets_file)), shots, scored)
    assert data.ids == [f"k{i}" for i in scored]
    first = data.examples[0].messages
    assert [m["role"] for m in first] == ["user", "assistant"] * 4
    assert [m["content"] for m in first[:6:2]] == [TICKETS[i][0] for i in shots]
    assert first[-1]["content"] == TICKETS[scored[0]][1]
    with pytest.raises(TunesmithError, match="--few-shot 12: the data has 12 rows"):
        split_shots(12, 12, 0)


def test_select_ranks_candidates_and_writes_the_table(stories_path, tiny_llama, tickets_file, tmp_path, capsys):
    out = tmp_path / "sel"
    args = ["eval", "select", "--models", f"{stories_path},{tiny_llama}", "--data", str(tickets_file), "--few-shot", "2",
            "--max-new-tokens", "3", "--limit", "4", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "select.json").read_text())
    assert summary["rank_by"] == "accuracy" and summary["n"] == 4 and len(summary["shot_ids"]) == 2
    ranking = summary["ranking"]
    assert {r["model"] for r in ranking} == {str(stories_path), str(tiny_llama)}
    assert {r["template"] for r in ranking} == {"chatml", "model"}  # stories260K has no chat template of its own
    assert ranking[0]["accuracy"] >= ranking[1]["accuracy"]
    assert "| rank | model | template | exact_match |" in capsys.readouterr().out
