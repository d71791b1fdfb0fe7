"""`tunesmith runs list/compare`: differing config keys next to metrics, CSV and a loss plot."""

import csv
import json

import pytest

from tests.eval.conftest import train_tiny_run
from tunesmith.cli import main
from tunesmith.eval.experiments import differing_keys, flatten, run_metrics


@pytest.fixture(scope="module")
def two_runs(stories_path, tickets_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_runs")
    a = train_tiny_run(stories_path, tickets_file, folder / "lr-high")
    b = train_tiny_run(stories_path, tickets_file, folder / "lr-low", lr=1e-4, max_steps=3, save_steps=3)
    (a / "eval" / "held").mkdir(parents=True)
    (a / "eval" / "held" / "metrics.json").write_text(json.dumps({"name": "held", "metrics": {"accuracy": 0.75}, "compare": {}}))
    return folder, a, b


def test_flatten_and_differing_keys():
    assert flatten({"train": {"lr": 1e-3, "x": [1, 2]}, "name": "a"}) == {"train.lr": 1e-3, "train.x": "1,2", "name": "a"}
    configs = [{"name": "a", "train.lr": 1.0, "seed": 1}, {"name": "b", "train.lr": 2.0, "seed": 1}]
    assert differing_keys(configs) == ["train.lr"]


def test_run_metrics_read_losses_and_eval_reports(two_runs):
    _, a, b = two_runs
    records = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    metrics = run_metrics(b)
    assert metrics["steps"] == 3
    assert (metrics["final_eval_loss"], metrics["best_eval_loss"]) == (evals[-1], min(evals))
    assert run_metrics(a)["held/accuracy"] == 0.75


def test_runs_compare_writes_table_csv_and_plot(two_runs, tmp_path, capsys):
    folder, a, b = two_runs
    out = tmp_path / "cmp"
    assert main(["runs", "compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| run | train.max_steps | train.lr | train.save_steps |")
    with (out / "compare.csv").open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["lr-high", "lr-low"]
    assert [float(r["train.lr"]) for r in rows] == [1e-2, 1e-4]
    assert rows[0]["held/accuracy"] == "0.75" and rows[1]["held/accuracy"] == ""
    assert float(rows[1]["best_eval_loss"]) == run_metrics(b)["best_eval_loss"]
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert "![loss curves](loss.png)" in (out / "compare.md").read_text()

    assert main(["runs", "list", str(folder)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("| run | model.path | method | peft.method | data.train |")
    assert [line.split("|")[1].strip() for line in listed[2:]] == ["lr-high", "lr-low"]
    assert main(["runs", "compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
