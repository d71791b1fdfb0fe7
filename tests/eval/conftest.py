"""A tiny trained LoRA run (stories260K, 2 steps) and classification data with Korean rows, shared by the eval tests."""

import json

import pytest

TICKETS = [
    ("Where is my parcel?", "shipping"), ("I want my money back", "refund"), ("Why was I charged twice?", "billing"),
    ("배송이 언제 오나요?", "shipping"), ("환불해 주세요", "refund"), ("청구서가 이상해요", "billing"),
    ("My order is late", "shipping"), ("Refund my order please", "refund"), ("Invoice is wrong", "billing"),
    ("택배가 안 왔어요", "shipping"), ("돈을 돌려주세요", "refund"), ("결제가 두 번 됐어요", "billing"),
]
SYSTEM = "Classify the ticket: shipping, refund or billing."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tickets_file(tmp_path_factory):
    rows = [{"id": f"k{i}", "prompt": p, "completion": c} for i, (p, c) in enumerate(TICKETS)]
    return write_jsonl(tmp_path_factory.mktemp("tickets") / "tickets.jsonl", rows)


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
