"""`tunesmith runs list/compare`: differing config keys next to metrics, CSV and a loss plot."""

import csv
import json
import os

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.eval.experiments import differing_keys, flatten, run_metrics


def make_run(folder, name, config, changes, records, made_at):
    """A run directory as training leaves it, as far as runs list/compare read it."""
    run = folder / name
    run.mkdir(parents=True)
    config = {**config, "name": name, "train": {**config["train"], **changes}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run / "template.json").write_text("{}", encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.utime(run / "config.yaml", (made_at, made_at))
    return run


@pytest.fixture
def two_runs(tiny_run, tmp_path):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text(encoding="utf-8"))
    folder = tmp_path / "runs"
    a = make_run(folder, "lr-high", config, {"lr": 1e-2}, [
        {"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 2.5}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.25},
    ], made_at=1_000)
    b = make_run(folder, "lr-low", config, {"lr": 1e-4, "max_steps": 3}, [
        {"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 2.9, "eval_exact_match": 0.25}, {"step": 3, "loss": 2.8},
        {"step": 3, "eval_loss": 2.95}, {"step": 3, "eval_exact_match": 0.5},
    ], made_at=2_000)
    (a / "eval" / "held").mkdir(parents=True)
    (a / "eval" / "held" / "metrics.json").write_text(json.dumps({"name": "held", "metrics": {"accuracy": 0.75}, "compare": {}}))
    return folder, a, b


def test_flatten_and_differing_keys():
    assert flatten({"train": {"lr": 1e-3, "x": [1, 2]}, "name": "a"}) == {"train.lr": 1e-3, "train.x": "1,2", "name": "a"}
    configs = [{"name": "a", "train.lr": 1.0, "seed": 1}, {"name": "b", "train.lr": 2.0, "seed": 1}]
    assert differing_keys(configs) == ["train.lr"]


def test_run_metrics_read_losses_and_eval_reports(two_runs):
    _, a, b = two_runs
    assert run_metrics(b) == {"steps": 3, "final_loss": 2.8, "final_eval_loss": 2.95, "best_eval_loss": 2.9, "best_eval_exact_match": 0.5}
    assert run_metrics(a)["held/accuracy"] == 0.75


def test_runs_compare_writes_table_csv_and_plot(two_runs, tmp_path, capsys):
    folder, a, b = two_runs
    out = tmp_path / "cmp"
    assert main(["runs", "compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| run | train.lr | train.max_steps | steps | final_loss |")
    with (out / "compare.csv").open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["lr-high", "lr-low"]
    assert [float(r["train.lr"]) for r in rows] == [1e-2, 1e-4]
    assert "| lr-low | 0.0001 | 3 |" in printed  # config values as written, not rounded
    assert rows[0]["held/accuracy"] == "0.75" and rows[1]["held/accuracy"] == ""
    assert (rows[0]["best_eval_loss"], rows[1]["best_eval_loss"]) == ("2.25", "2.9")
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert "![loss curves](loss.png)" in (out / "compare.md").read_text()

    (b / "adapter").mkdir()  # lr-low finished; lr-high was stopped before its first checkpoint
    assert main(["runs", "list", str(folder)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("| run | model.path | method | peft.method | data.train |") and listed[0].endswith("| status |")
    assert [line.split("|")[1].strip() for line in listed[2:]] == ["lr-high", "lr-low"]
    assert [line.split("|")[-2].strip() for line in listed[2:]] == ["incomplete (no checkpoint)", "finished"]
    assert main(["runs", "compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
