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


@pytest.fixture(scope="session")
def tiny_llama_words(tmp_path_factory) -> Path:
    """Like tiny_llama, but greedy generation writes a repeated word, where seed 0's model writes only
    newlines: for tests that need non-empty generations."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_words"), seed=1)
