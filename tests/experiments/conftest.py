"""A folder to queue jobs in: the current directory, with jobs' processes importing this checkout's tunesmith."""

import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """cwd for `tunesmith queue ...`: capitals.jsonl and capitals.yaml (stories260K, a few LoRA steps) in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs train as the in-process runs they are compared with
    monkeypatch.setenv("COLUMNS", "200")  # rich tables at full width
    monkeypatch.delenv("TUNESMITH_QUEUE", raising=False)
    (tmp_path / "capitals.jsonl").write_text(
        "".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in CAPITALS), encoding="utf-8")
    return tmp_path


def write_recipe(folder: Path, stories_path, name: str = "capitals", **train) -> Path:
    """8 steps of 2 examples, with dropout, a warmup+cosine schedule and a checkpoint every 2 steps (as test_resume's)."""
    raw = {
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": "capitals.jsonl", "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"max_steps": 8, "lr": 1e-2, "batch_size": 2, "logging_steps": 1, "warmup": 2, "scheduler": "cosine",
                  "save_steps": 2, "save_total_limit": 10, **train},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path
