"""A tiny random GLiNER model, built offline, to try `tunesmith data label` without the hub:

    .venv/bin/python examples/tiny_gliner.py outputs/tiny-gliner

A one-layer BERT encoder of width 16 with a character-level WordPiece vocabulary (ASCII and every Hangul
syllable, so English and Korean text has no unknown tokens), saved as gliner saves a model and loaded back
by `GLiNER.from_pretrained` like any GLiNER folder. Its weights are random, so its entities are arbitrary:
it shows the pipeline (windows, offsets, reports, the review sheet, the SFT set), not labelling quality.
The tests and bench/label_throughput.py build theirs with this script's `build`.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

SYMBOLS = string.ascii_letters + string.digits + string.punctuation + "·…‘’“”₩€£￦"
HANGUL = "".join(chr(c) for c in range(0xAC00, 0xD7A4))


def build(folder: Path, max_len: int = 384, max_width: int = 12, seed: int = 0) -> Path:
    """Write the model into `folder` (gliner_config.json, pytorch_model.bin, the tokenizer) and return it."""
    import torch
    from gliner import GLiNER
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = list(dict.fromkeys(SYMBOLS + HANGUL))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters)]) + "\n",
                                      encoding="utf-8")
    # Chinese-character splitting off: Hangul syllables of a word stay one word, as the real models see them.
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=False, model_max_length=512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    encoder = {"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 32, "max_position_embeddings": 512}
    model = GLiNER.from_config({"model_name": str(folder), "encoder_config": encoder, "hidden_size": 16, "dropout": 0.0,
                                "max_len": max_len, "max_width": max_width}, backbone_from_pretrained=False)
    model.save_pretrained(folder)
    (folder / "vocab.txt").unlink()  # tokenizer.json holds it
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random GLiNER model (offline) in a folder.")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    print(f"tiny GLiNER written to {build(args.folder)}")


if __name__ == "__main__":
    main()
