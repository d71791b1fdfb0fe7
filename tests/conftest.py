"""Shared fixtures: a real tokenizer with a chat template (SmolLM2's, pad == eos), the pretrained
stories260K model from ../shared, and tiny random models built in-process. Nothing touches the network."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SMOL_TOKENIZER = FIXTURES / "smollm2_tokenizer"
STORIES = Path(os.environ.get("TUNESMITH_SHARED", ROOT.parent / "shared")) / "models" / "stories260K"


@pytest.fixture(scope="session")
def smol_tokenizer():
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(str(SMOL_TOKENIZER))


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.fail(f"stories260K not found at {STORIES} (set TUNESMITH_SHARED to the shared/ folder)")
    return STORIES


@pytest.fixture(scope="session")
def stories_tokenizer(stories_path):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(str(stories_path))


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer (vocab 49152, chat template, pad == eos)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    for file in SMOL_TOKENIZER.iterdir():
        shutil.copy2(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def make_lora_run(folder: Path, base: Path, seed: int = 0, steps: int = 3, **sections) -> Path:
    """A finished tiny LoRA run (a few steps on 16 question/answer rows, eval data included) in `folder`."""
    import json

    from tunesmith.config import validate
    from tunesmith.methods.sft import train

    pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]
    data = folder.parent / f"{folder.name}-data.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in pairs), encoding="utf-8")
    raw = {
        "name": folder.name,
        "model": {"path": str(base), "dtype": "float32"},
        "data": {"train": str(data), "eval": str(data), "max_length": 64, "system_prompt": "Name the capital."},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": steps, "lr": 5e-2, "batch_size": 8, "warmup": 0, "scheduler": "constant", "seed": seed},
        "output_dir": str(folder),
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    train(validate(raw))
    return folder


@pytest.fixture(scope="session")
def lora_run(tiny_llama, tmp_path_factory) -> Path:
    """A tiny finished LoRA run on `tiny_llama`, shared by the merge, publish, chat and serve tests."""
    return make_lora_run(tmp_path_factory.mktemp("runs") / "capitals", tiny_llama)


@pytest.fixture(scope="session")
def lora_run_factory():
    """`make_lora_run` for tests that need a run of their own (another base, seed or method)."""
    return make_lora_run
