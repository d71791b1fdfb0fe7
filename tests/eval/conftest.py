"""A tiny trained LoRA run (stories260K, 2 steps) on the classification data of tests/conftest.py (tickets_file),
shared by the eval tests."""

import pytest

from tests.conftest import TICKETS, write_jsonl  # noqa: F401  (re-exported for the eval tests)

SYSTEM = "Classify the ticket: shipping, refund or billing."


def train_tiny_run(model_path, data_file, out, sections=None, **train):
    from tunesmith.config import validate
    from tunesmith.methods.sft import train as sft_train

    raw = {
        "name": out.name,
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": str(data_file), "eval": str(data_file), "max_length": 128, "template": "chatml", "system_prompt": SYSTEM},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "lr": 1e-2, "batch_size": 12, "logging_steps": 1, "warmup": 0, "eval_steps": 1, "save_steps": 2, **train},
        "output_dir": str(out),
        **(sections or {}),
    }
    return sft_train(validate(raw)).path


@pytest.fixture(scope="session")
def tiny_run(stories_path, tickets_file, tmp_path_factory):
    return train_tiny_run(stories_path, tickets_file, tmp_path_factory.mktemp("runs") / "tiny")
