"""Reward models: trained on pairs, their accuracy rises on a separable toy set; `tunesmith score` reads them back."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import Snapshot

from tunesmith.config import validate
from tunesmith.methods.reward import train

# Separable: the chosen reply is always a polite sentence, the rejected one a rude word.
TOPICS = ["refund", "invoice", "password", "parcel", "login", "address", "receipt", "delivery", "account", "upgrade", "charge", "order"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rows = [{"prompt": f"Help with my {t}?", "chosen": f"Of course, I will help with your {t}.", "rejected": "No."} for t in TOPICS]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]), encoding="utf-8")
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]), encoding="utf-8")
    return folder


def recipe(model_path, folder, out, **sections):
    raw = {
        "name": "rm",
        "method": "reward",
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 8, "lr": 1e-2, "batch_size": 8, "logging_steps": 1, "eval_steps": 4, "save_steps": 4,
                  "warmup": 0, "scheduler": "constant"},
        "output_dir": str(out),
    }
    for section, values in sections.items():  # a peft section replaces the LoRA one: other methods take other keys
        raw[section] = values if section == "peft" else {**raw.get(section, {}), **values}
    return validate(raw)


def test_reward_model_learns_a_separable_preference_and_scores_it_back(stories_path, pairs, tmp_path, capsys):
    from tunesmith.cli import main
    from tunesmith.models.reward import load_reward_model, score

    snap = Snapshot()
    system = "Be a helpful support agent."
    run = train(recipe(stories_path, pairs, tmp_path / "run", data={"system_prompt": system}), callbacks=[snap])
    records = run.metrics()
    train_acc = [r["accuracy"] for r in records if "accuracy" in r]
    eval_acc = [r["eval_accuracy"] for r in records if "eval_accuracy" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    assert train_acc[-1] == 1.0 and losses[-1] < losses[0] / 2
    assert eval_acc[-1] == 1.0  # held-out topics: the model learned the preference, not the 8 prompts

    head = {n for n in snap.trainable if "score" in n}
    assert head and snap.trainable - head == {n for n in snap.trainable if "lora_" in n}  # adapters + the new head
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in head)
    assert all(torch.equal(snap.before[n], snap.after[n]) for n in set(snap.before) - snap.trainable)

    model = load_reward_model(run.path)
    prompt = [{"role": "user", "content": "Help with my refund?"}]
    good, bad = score(model, [prompt, prompt], ["Of course, I will help with your refund.", "No."])
    assert good > bad
    # Scored as trained: the run's system prompt is added where a prompt has none.
    with_system = [{"role": "system", "content": system}, *prompt]
    assert score(model, [with_system], ["No."]) == pytest.approx([bad], abs=1e-5)
    assert score(model, [[{"role": "system", "content": "Other."}, *prompt]], ["No."]) != pytest.approx([bad], abs=1e-5)

    out = tmp_path / "scores.jsonl"
    assert main(["score", str(run.path), "--data", str(pairs / "eval.jsonl"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows: 4" in printed and "pairwise_accuracy: 1.0000" in printed
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 4 and all(s["chosen_score"] > s["rejected_score"] for s in scored)
    # One reply per row (prompt_completion rows): a single score each.
    singles = tmp_path / "replies.jsonl"
    singles.write_text(json.dumps({"prompt": "Help with my order?", "completion": "No."}) + "\n", encoding="utf-8")
    assert main(["score", str(run.path), "--data", str(singles)]) == 0
    assert "mean_score:" in capsys.readouterr().out


def test_score_refuses_a_run_that_is_not_a_reward_model(tmp_path, capsys):
    from tunesmith.cli import main

    (tmp_path / "config.yaml").write_text("method: sft\nmodel: {path: x}\ndata: {train: [t.jsonl]}\n")
    (tmp_path / "template.json").write_text("{}")
    assert main(["score", str(tmp_path), "--data", "x.jsonl"]) == 2
    assert "not a reward model run" in capsys.readouterr().err


def test_the_report_gives_the_method_settings_in_words(reward_run):
    assert "; method: reward (center_rewards: none), lora (r=4, alpha=8, dropout=0, target_modules=all-linear, init=default)\n" in (Path(reward_run) / "report.md").read_text()


def test_a_reward_run_is_no_starting_model_and_does_not_merge(reward_run):
    from tunesmith.config import ModelConfig
    from tunesmith.errors import TunesmithError
    from tunesmith.models.load import resolve_source
    from tunesmith.models.merge import merge_run

    with pytest.raises(TunesmithError, match="is a reward model, not a language model to start from"):
        resolve_source(ModelConfig(path=reward_run))
    with pytest.raises(TunesmithError, match="is a reward model"):
        merge_run(reward_run, "unused")


@pytest.mark.parametrize("peft", [
    {"method": "ia3"},  # all-linear looked for a language model's output layer, which a reward model has not: StopIteration
    {"method": "lora", "r": 4, "target_modules": ["embed_tokens", "q_proj"], "dropout": 0.0},  # the packing check read num_embeddings of PEFT's wrapper
], ids=["ia3", "lora-on-the-embeddings"])
def test_reward_models_train_with_other_adapters(stories_path, pairs, tmp_path, peft):
    snap = Snapshot()
    run = train(recipe(stories_path, pairs, tmp_path / "run", peft=peft, train={"max_steps": 3, "eval_steps": None, "save_steps": None}), callbacks=[snap])
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert losses[-1] < losses[0]
    changed = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert any("score" in n for n in changed) and any(("ia3_l" in n or "lora_" in n) for n in changed)
    assert changed <= snap.trainable
