"""Fixtures of the data workbench's tests: a tiny seq2seq model built in-process."""

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory):
    """A random 1-layer BART with SmolLM2's tokenizer: real loading and generation, meaningless output."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny_bart")
    torch.manual_seed(0)
    config = BartConfig(vocab_size=49152, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=2, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1, forced_bos_token_id=None, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(folder)
    for file in (FIXTURES / "smollm2_tokenizer").iterdir():
        shutil.copy2(file, folder / file.name)
    return folder
