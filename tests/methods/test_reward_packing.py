"""Reward models on packed pairs: a step over packed rows equals TRL's RewardTrainer on one padded batch of the same
pairs, and a leak between packed conversations is caught (TRL's padded batches instead)."""

import json

import pytest
from safetensors.torch import load_file
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.methods.test_reward import pairs, recipe  # noqa: F401 (a fixture)
from tunesmith.methods.reward import train
from tunesmith.models import attention


def trained(run):
    keys = ("loss", "grad_norm", "accuracy", "margin", "mean_reward", "eval_loss", "eval_margin")
    return [{k: r[k] for k in keys if k in r} for r in run.metrics() if "loss" in r or "eval_loss" in r]


@pytest.mark.parametrize("center", [None, 0.01])
def test_a_step_over_packed_rows_equals_trls_padded_batch_of_its_pairs(stories_path, pairs, tmp_path, center):  # noqa: F811
    sgd = {"optimizer": "sgd", "lr": 0.5, "max_steps": 2, "eval_steps": 1, "eval_batch_size": 4}
    reward = {"center_rewards": center} if center else {}
    padded = train(recipe(stories_path, pairs, tmp_path / "padded", train={**sgd, "packing": False}, reward=reward))
    assert json.loads((padded.path / "data_report.json").read_text())["batching"]["mode"] == "random"  # TRL's RewardTrainer, batches of 8
    probe = train(recipe(stories_path, pairs, tmp_path / "probe", train={**sgd, "max_steps": 1, "max_tokens_per_batch": 200}, reward=reward))
    batching = json.loads((probe.path / "data_report.json").read_text())["batching"]
    assert batching["mode"] == "packed" and batching["batches"] > 2 and batching["padding_share"] == 0
    run = train(recipe(stories_path, pairs, tmp_path / "packed", train={**sgd, "max_tokens_per_batch": 200, "grad_accum": batching["batches"]}, reward=reward))

    assert [r.keys() for r in trained(run)] == [r.keys() for r in trained(padded)]
    for a, b in zip(trained(run), trained(padded)):
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-5, abs=1e-5)
    wa, wb = (load_file(r.path / "adapter" / "adapter_model.safetensors") for r in (run, padded))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    assert sum("eval_loss" in r for r in trained(run)) == 2


def test_a_planted_leak_between_packed_conversations_is_caught_and_training_pads_instead(stories_path, pairs, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("transformers.masking_utils.find_packed_sequence_indices", lambda position_ids: None)
    leaky = lambda module, q, k, v, mask, cu_seq_lens_q=None, **kw: sdpa_attention_forward(module, q, k, v, mask, **kw)  # noqa: E731
    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, leaky)
    run = train(recipe(stories_path, pairs, tmp_path / "run", train={"max_steps": 1}))
    assert "train.packing: a conversation's reward changes with the conversation packed before it" in capsys.readouterr().err
    report = json.loads((run.path / "data_report.json").read_text())["batching"]
    assert report["mode"] == "random" and report["note"].startswith("packing is off: train.packing: a conversation's reward changes")
    assert "  - note: packing is off" in (run.path / "data_report.md").read_text()
