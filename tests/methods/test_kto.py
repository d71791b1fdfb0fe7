"""KTO on unpaired examples (and on pairs read as unpaired), on the pretrained stories260K model."""

import json

import pytest
import torch

from tests.conftest import Snapshot

from tunesmith.config import validate
from tunesmith.methods.kto import train, with_kl_replies

CAPITALS = [("France", "Paris", "Rome"), ("Japan", "Tokyo", "Seoul"), ("Italy", "Rome", "Paris"), ("Spain", "Madrid", "Lima")]


@pytest.fixture(scope="module")
def unpaired_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "unpaired.jsonl"
    rows = []
    for country, good, bad in CAPITALS:
        rows += [{"prompt": f"Capital of {country}?", "completion": good, "label": True},
                 {"prompt": f"Capital of {country}?", "completion": bad, "label": "false"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def recipe(model_path, data_file, out, **sections):
    raw = {
        "name": "k",
        "method": "kto",
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": data_file, "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 6, "lr": 5e-3, "batch_size": 4, "logging_steps": 1, "warmup": 0, "scheduler": "constant"},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


def test_kto_separates_desirable_from_undesirable_replies(stories_path, unpaired_file, tmp_path, capsys):
    snap = Snapshot()
    run = train(recipe(stories_path, unpaired_file, tmp_path / "run"), callbacks=[snap])
    # train.packing is on by default: KTO does not pack, and says so on the terminal and in the data report
    assert "train.packing: kto trains unpacked" in capsys.readouterr().err
    batching = json.loads((run.path / "data_report.json").read_text())["batching"]
    assert batching["mode"] == "random" and batching["batches"] == 2 and batching["batch_size"] == 4
    assert batching["note"].startswith("packing is off: kto trains unpacked")
    assert "note: packing is off: kto trains unpacked" in (run.path / "data_report.md").read_text()
    records = [r for r in run.metrics() if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    margins = [r["rewards/margins"] for r in records]
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > 0.5  # policy == reference at step 1
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert any(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable)
    assert all(torch.equal(snap.before[n], snap.after[n]) for n in set(snap.before) - snap.trainable)
    assert "reward of desirable replies (train): first" in (run.path / "report.md").read_text()


def test_kl_replies_pair_each_example_with_another_prompts_reply():
    rows = [{"prompt_ids": [p], "completion_ids": [p, 100 + i], "label": i % 2 == 0} for i, p in enumerate([1, 1, 2, 2, 3, 3, 4, 4])]
    out = with_kl_replies(rows, batch_size=4, seed=0)
    assert len(out) == 8
    for first in (0, 4):
        batch = out[first : first + 4]
        assert [r["KL_completion_ids"] for r in batch] == [batch[-1]["completion_ids"]] + [r["completion_ids"] for r in batch[:-1]]
    assert sum(r["KL_completion_ids"][0] == r["prompt_ids"][0] for r in out) < 4  # shuffled: mostly mismatched prompts
