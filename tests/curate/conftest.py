"""Fixtures of the data workbench's tests: a tiny seq2seq model and a tiny GLiNER built in-process; for `data label`,
a NER that finds planted strings and translators of a fixed mapping."""

import json
import shutil
from pathlib import Path

import pytest

import tunesmith.curate.ner as ner
import tunesmith.curate.seq2seq as seq2seq

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


def load_tiny_gliner_builder():
    """examples/tiny_gliner.py's build(), imported by path (examples/ is not a package of the tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_gliner", FIXTURES.parents[1] / "examples" / "tiny_gliner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


@pytest.fixture(scope="session")
def tiny_gliner(tmp_path_factory):
    """A random GLiNER (1-layer BERT, character vocabulary) that reads 8 words at a time and spans up to 3: real
    loading and inference through gliner, arbitrary entities; a text of more than 8 words takes several windows."""
    return load_tiny_gliner_builder()(tmp_path_factory.mktemp("tiny_gliner"), max_len=8, max_width=3)



class FakeNER:
    """Finds every occurrence of the planted strings: {text: (label, score)}; longest first, never overlapping."""

    def __init__(self, planted: dict[str, tuple[str, float]]):
        self.planted, self.calls, self.split = planted, [], 0

    def __call__(self, texts, labels, threshold, batch_size):
        self.calls.append(list(texts))
        out = []
        for text in texts:
            found = []
            for name in sorted(self.planted, key=len, reverse=True):
                label, score = self.planted[name]
                at = text.find(name)
                while at >= 0:
                    if label in labels and score >= threshold and all(at >= e["end"] or at + len(name) <= e["start"] for e in found):
                        found.append({"start": at, "end": at + len(name), "text": name, "label": label, "score": score})
                    at = text.find(name, at + 1)
            out.append(sorted(found, key=lambda e: e["start"]))
        return out


class FakeTranslator:
    """Translates by a dict; a text it does not know is an error (the test planted something wrong)."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping, self.calls = mapping, []

    def __call__(self, texts, num_return=1, batch_size=16, temperature=0.0, seed=0, num_beams=1):
        self.calls.append(list(texts))
        return [[self.mapping[t]] for t in texts]


def use_fake_ner(monkeypatch, planted: dict) -> FakeNER:
    fake = FakeNER(planted)
    monkeypatch.setattr(ner.Gliner, "load", staticmethod(lambda name: fake))
    return fake


def use_fake_translators(monkeypatch, to: dict, back: dict) -> list:
    """Seq2Seq.load gives the ko->en translator first, then en->ko; returns the (name, src, tgt) loaded."""
    loaded, fakes = [], {("ko", "en"): FakeTranslator(to), ("en", "ko"): FakeTranslator(back)}
    monkeypatch.setattr(seq2seq.Seq2Seq, "load", staticmethod(lambda name, src=None, tgt=None, **kw: loaded.append((name, src, tgt)) or fakes[(src, tgt)]))
    return loaded


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
