"""GRPO with a user's reward function, on the pretrained stories260K model."""

import json

import pytest
import torch

from tests.conftest import Snapshot

from tunesmith.config import validate
from tunesmith.methods.grpo import train

REWARD = '''
def fewer_characters(prompts, completions, **columns):
    assert all(isinstance(c, str) for c in completions) and "topic" in columns
    return [-len(c) / 50 for c in completions]
'''


@pytest.fixture
def prompts_and_reward(tmp_path):
    data = tmp_path / "prompts.jsonl"
    topics = ["France", "Japan", "Italy", "Spain", "Egypt", "Peru", "Kenya", "Chile"]
    data.write_text("".join(json.dumps({"prompt": f"Tell me about {t}.", "topic": t}) + "\n" for t in topics), encoding="utf-8")
    reward = tmp_path / "my_rewards.py"
    reward.write_text(REWARD, encoding="utf-8")
    return str(data), f"{reward}:fewer_characters"


def test_grpo_moves_the_policy_towards_higher_reward(stories_path, prompts_and_reward, tmp_path):
    data, function = prompts_and_reward
    recipe = validate({
        "name": "g",
        "method": "grpo",
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": data, "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 8, "lr": 2e-2, "batch_size": 8, "logging_steps": 1, "warmup": 0, "scheduler": "constant"},
        "grpo": {"rewards": [{"type": "python", "function": function}], "num_generations": 4, "max_new_tokens": 32},
        "output_dir": str(tmp_path / "run"),
    })
    snap = Snapshot()
    run = train(recipe, callbacks=[snap])
    rewards = [r["rewards/fewer_characters/mean"] for r in run.metrics() if "rewards/fewer_characters/mean" in r]
    assert len(rewards) == 8
    # Rewards are measured on the policy's own samples at each step: later samples are shorter.
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable if "lora_B" in n)
    report = (run.path / "report.md").read_text()
    assert "fewer_characters: first" in report
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()
